"""prepare.task: transcription: the whole Whisper converted from CTranslate2 transcribes as CTranslate2 does; the
readers take Common Voice tables, audiofolder metadata and x.wav + x.txt folders and refuse bad input by name;
WER counts digits and number words alike; training on the cached encoder equals training through it; greedy and
beam decoding; the export transcribes in ``transformers.pipeline`` exactly as ``crosstune predict`` does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
from conftest import write_digit_strings, write_params, write_tiny_whisper

from crosstune.errors import DataError

CT2_CLIPS = 12  # greedy transcripts compared one by one (bench/asr/conversion.py compares all 120 test utterances)
LOGIT_TOLERANCE = 1e-3  # fp16 weights on both sides, run in fp32: only summation order differs (measured ~3e-5)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_strings(tmp_path_factory.mktemp("digits") / "digit_strings")


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper")


def _params(path: Path, digits: Path, backbone: str, **sections: dict) -> Path:
    overrides = {
        "prepare": {"task": "transcription", "audio_column": "audio", "label_column": "transcript",
                    "validation_fraction": 0.25},
        "backbone": {"name": backbone, "weights": "DEFAULT", "clip_seconds": 0},
        "freeze": {"depth": "all"},
        "finetune": {"loss": "token_cross_entropy", "select_metric": "wer", "class_weights": "none", "epochs": 1,
                     "batch_size": 4, "lr": 1e-3, "select_window": 1},
        "evaluate": {"baselines": [], "guard": "fallback", "batch_size": 8},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return write_params(path, overrides)


def _first_stages(work: Path, digits: Path, backbone: str, **sections: dict) -> Path:
    """prepare, backbone and attach-head of the digit strings into ``work``; returns the params file."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    params = _params(work / "params.yaml", digits, backbone, **sections)
    prepare_stage(str(digits / "train.csv"), str(digits / "test.csv"), str(work / "prepared"), str(params))
    backbone_stage(str(work / "prepared"), str(work / "backbone"), str(work / "encoded"), str(work / "backbone.json"),
                   str(work / "selection.json"), str(work / "selection.csv"), str(params))
    attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(work / "initial"), str(work / "freeze.json"),
                      str(params))
    return params


# --- the conversion --------------------------------------------------------------------------------------


def test_converted_recogniser_transcribes_as_ctranslate2(tmp_path: Path, digits: Path) -> None:
    import ctranslate2
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from crosstune.backbones.whisper_weights import converted_whisper_model, packaged_whisper_dir
    from crosstune.data.audio import read_audio, resample

    directory = converted_whisper_model(tmp_path / "backbones")
    model = WhisperForConditionalGeneration.from_pretrained(directory).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(directory)
    table = pd.concat([pd.read_csv(digits / "train.csv"), pd.read_csv(digits / "test.csv")]).head(CT2_CLIPS)
    waves = [resample(*read_audio(digits / path), 16000) for path in table["audio"]]
    features = extractor(waves, sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
    reference = ctranslate2.models.Whisper(str(packaged_whisper_dir()), device="cpu", compute_type="float32")
    prompt = [model.generation_config.decoder_start_token_id, model.generation_config.no_timestamps_token_id]
    results = reference.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(table), beam_size=1,
                                 max_length=40, return_logits_vocab=True)
    with torch.inference_mode():
        ours = model.generate(torch.from_numpy(features), max_new_tokens=38)
    for row, result in enumerate(results):
        expected = result.sequences_ids[0]
        generated = [token for token in ours[row].tolist() if token != model.config.eos_token_id]  # prompt not returned
        assert generated == expected, f"clip {row}: {generated} vs CTranslate2's {expected}"
    with torch.inference_mode():  # the next-token logits along CTranslate2's own transcript of clip 0
        sequence = torch.tensor([prompt + results[0].sequences_ids[0]])
        logits = model(input_features=torch.from_numpy(features[:1]), decoder_input_ids=sequence).logits[0]
    for step, theirs in enumerate(results[0].logits[0]):
        theirs = np.asarray(theirs).reshape(-1)
        allowed = theirs > -1e30  # CTranslate2 reports suppressed tokens as -inf
        difference = np.abs(logits[len(prompt) - 1 + step].numpy()[allowed] - theirs[allowed]).max()
        assert difference < LOGIT_TOLERANCE, f"step {step}: logits differ by {difference}"


def test_a_model_bin_without_a_decoder_is_refused_by_name() -> None:
    from crosstune.backbones.whisper_weights import (
        packaged_whisper_dir,
        read_ctranslate2_variables,
        whisper_model_state,
    )

    variables = {name: value for name, value in read_ctranslate2_variables(packaged_whisper_dir() / "model.bin").items()
                 if not name.startswith("decoder/")}
    with pytest.raises(KeyError, match="decoder/embeddings/weight"):
        whisper_model_state(variables, {"<|endoftext|>": 50256, "<|startoftranscript|>": 50257})


# --- reading --------------------------------------------------------------------------------------------


def _read(path: Path, **prepare: object) -> pd.DataFrame:
    from crosstune.config import PrepareParams
    from crosstune.data.splitting import load_examples

    return load_examples(path, PrepareParams(task="transcription", **prepare))


def test_reads_common_voice_audiofolder_and_paired_folders(tmp_path: Path, digits: Path) -> None:
    table = pd.read_csv(digits / "train.csv").head(3)
    clips = [str(digits / path) for path in table["audio"]]
    common_voice = tmp_path / "cv.tsv"
    pd.DataFrame({"client_id": table["speaker"], "path": clips, "sentence": table["transcript"]}).to_csv(
        common_voice, sep="\t", index=False)
    audiofolder = digits / "metadata.csv"
    pd.DataFrame({"file_name": table["audio"], "transcription": table["transcript"]}).to_csv(audiofolder, index=False)
    pairs = tmp_path / "pairs" / "jackson"
    pairs.mkdir(parents=True)
    for clip, text in zip(clips, table["transcript"]):
        (pairs / Path(clip).name).write_bytes(Path(clip).read_bytes())
        (pairs / Path(clip).name).with_suffix(".txt").write_text(f"  {text}\n")
    for frame in (_read(common_voice), _read(audiofolder), _read(tmp_path / "pairs")):
        assert sorted(frame["label"]) == sorted(table["transcript"])
        assert all(Path(path).is_file() for path in frame["audio"])
    assert list(_read(common_voice)["speaker"]) == list(table["speaker"])
    assert set(_read(tmp_path / "pairs")["speaker"]) == {"jackson"}
    audiofolder.unlink()


def _bad_table(tmp_path: Path, digits: Path, case: str) -> tuple[Path, str]:
    table = pd.read_csv(digits / "train.csv").head(3)
    table["audio"] = [str(digits / path) for path in table["audio"]]
    if case == "empty transcript":
        table.loc[1, "transcript"] = "  "
        match = r"train\.csv: empty transcript in column 'transcript' at row\(s\) 2; write what"
    elif case == "missing recording":
        table.loc[2, "audio"] = str(tmp_path / "gone.wav")
        match = r"train\.csv: recording not found at row 3 .*gone\.wav"
    elif case == "corrupt recording":
        broken = tmp_path / "broken.wav"
        broken.write_bytes(b"RIFF....WAVEfmt not really")
        table.loc[0, "audio"] = str(broken)
        match = r"broken\.wav: unreadable or corrupt audio"
    else:  # no transcript column
        table = table.rename(columns={"transcript": "words_said"})
        match = r"no column of transcripts; the file has \['audio', 'words_said', 'speaker'\]"
    path = tmp_path / "train.csv"
    table.to_csv(path, index=False)
    return path, match


@pytest.mark.parametrize("case", ["empty transcript", "missing recording", "corrupt recording", "no column"])
def test_bad_tables_are_refused_by_file_row_and_fix(tmp_path: Path, digits: Path, case: str) -> None:
    path, match = _bad_table(tmp_path, digits, case)
    with pytest.raises(DataError, match=match):
        _read(path, label_column="transcript")


def test_bad_folders_are_refused_by_file(tmp_path: Path, digits: Path) -> None:
    clip = next((digits / "clips").glob("*.wav"))
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "a.wav").write_bytes(clip.read_bytes())
    with pytest.raises(DataError, match=r"a\.wav: no transcript beside it; write its text into .*a\.txt"):
        _read(folder)
    (folder / "a.txt").write_text("\n")
    with pytest.raises(DataError, match=r"a\.txt: empty transcript"):
        _read(folder)
    (folder / "a.txt").write_text("one two")
    (folder / "b.txt").write_text("three")
    with pytest.raises(DataError, match=r"b\.txt: a transcript without its recording"):
        _read(folder)


def test_a_recording_longer_than_the_window_or_than_whisper_is_refused(tmp_path: Path, digits: Path) -> None:
    from crosstune.transcription.encoding import check_window

    frame = pd.DataFrame({"audio": ["long.wav", "short.wav"]})
    with pytest.raises(DataError, match=r"long\.wav: 31\.0 s is longer than Whisper's 30 s window; cut the recording"):
        check_window({"test": frame}, {"test": [31.0, 1.0]}, 30, 0)
    with pytest.raises(DataError, match=r"long\.wav: 9\.50 s is longer than the recogniser's 7 s window.*raise "
                                         r"backbone\.clip_seconds to 10"):
        check_window({"test": frame}, {"test": [9.5, 1.0]}, 7, 7)


# --- scoring --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reference", "hypothesis", "expected"), [
    ("one nine nine three", "1, 9, 9, 3.", 0.0),  # digits and number words alike
    ("one nine nine three", "1993", 0.0),  # a run of digits counts digit by digit
    ("seven oh two", "7 0 2", 0.0),  # "oh" is the digit zero
    ("one nine nine three", "9, 9, 9, 8.", 0.5),  # two of four digits wrong
    ("Hello, World!", "hello world", 0.0),  # case and punctuation
    ("three two six", "Today, 2, 8.", 2 / 3),
])
def test_wer_after_whispers_normaliser(reference: str, hypothesis: str, expected: float) -> None:
    from crosstune.transcription.error_rates import error_rates

    assert error_rates([reference], [hypothesis])["wer"] == pytest.approx(expected)


def test_error_rates_are_corpus_level_and_align_each_error() -> None:
    from crosstune.transcription.error_rates import aligned_words, error_rates

    rates = error_rates(["one two three", "four five"], ["one three three", "four five six"])
    assert (rates["substitutions"], rates["deletions"], rates["insertions"]) == (1, 0, 1)
    assert rates["wer"] == pytest.approx(2 / 5)  # errors over all reference words, not a mean of utterance rates
    assert aligned_words("one two three", "one three") == [("equal", "1", "1"), ("delete", "2", ""),
                                                           ("equal", "3", "3")]


# --- training and decoding ------------------------------------------------------------------------------


def test_training_on_the_cached_encoder_equals_training_through_it(tmp_path: Path, digits: Path,
                                                                   tiny_whisper: Path) -> None:
    from crosstune.io import load_tensors
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage

    params = _first_stages(tmp_path, digits, str(tiny_whisper))
    meta = cache_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / "features"), str(params))
    assert meta["cached"] and meta["level"] == "all"
    for name, features in (("cached", str(tmp_path / "features")), ("uncached", None)):
        finetune_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / name),
                       str(tmp_path / f"live_{name}"), str(params), features)
    cached, uncached = (load_tensors(tmp_path / name / "model.safetensors") for name in ("cached", "uncached"))
    initial = load_tensors(tmp_path / "initial" / "model.safetensors")
    moved = max(float((cached[key] - initial[key]).abs().max()) for key in cached)
    assert moved > 1e-3  # the decoder trained
    assert max(float((cached[key] - uncached[key]).abs().max()) for key in cached) < 1e-4


def test_decoder_blocks_freeze_by_pattern_beside_the_cached_encoder(tmp_path: Path, digits: Path,
                                                                    tiny_whisper: Path) -> None:
    """``freeze.depth`` counts encoder blocks; decoder blocks freeze by name with ``freeze.patterns`` (the
    documented way): the first decoder block keeps its pretrained weights, the second trains."""
    from crosstune.io import load_tensors
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage

    params = _first_stages(tmp_path, digits, str(tiny_whisper), freeze={"depth": "all",
                                                                          "patterns": ["*decoder.layers.0.*"]})
    meta = cache_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / "features"), str(params))
    assert meta["cached"]
    finetune_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / "model"),
                   str(tmp_path / "live"), str(params), str(tmp_path / "features"))
    trained, initial = (load_tensors(tmp_path / name / "model.safetensors") for name in ("model", "initial"))
    moved = {key for key in trained if float((trained[key] - initial[key]).abs().max()) > 0}
    assert not any("decoder.layers.0." in key or ".encoder." in key for key in moved)
    assert any("decoder.layers.1." in key for key in moved)


def test_lora_bf16_and_masked_features_train_the_recogniser(tmp_path: Path, digits: Path,
                                                           tiny_whisper: Path) -> None:
    """LoRA adapters on the encoder's attention, SpecAugment's masks and bf16 autocast in one run: the cache steps
    aside (masked inputs reach the encoder), the adapters merge back into a stock Whisper directory, and both
    encoder and decoder moved."""
    from crosstune.io import load_tensors
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.finetune import finetune_stage

    params = _first_stages(tmp_path, digits, str(tiny_whisper),
                           freeze={"depth": 0, "lora_r": 2, "lora_alpha": 4.0, "lora_targets": ["q_proj", "v_proj"]},
                           augment={"time_mask_prob": 0.2, "time_mask_length": 5, "freq_mask_prob": 0.1,
                                    "freq_mask_length": 4},
                           finetune={"mixed_precision": "bf16"})
    meta = cache_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / "features"), str(params))
    assert not meta["cached"] and "augment" in meta["reason"]
    finetune_stage(str(tmp_path / "initial"), str(tmp_path / "encoded"), str(tmp_path / "model"),
                   str(tmp_path / "live"), str(params), None)
    trained, initial = (load_tensors(tmp_path / name / "model.safetensors") for name in ("model", "initial"))
    assert trained.keys() == initial.keys()  # merged: no lora_ tensors left
    moved = {key for key in trained if float((trained[key] - initial[key]).abs().max()) > 0}
    assert any(".encoder.layers." in key and "q_proj" in key for key in moved)
    assert not any(".encoder." in key and ("k_proj" in key or "fc1" in key) for key in moved)  # frozen, no adapter
    assert any(".decoder." in key for key in moved)
    assert json.loads((tmp_path / "model" / "params.json").read_text())["augment"]["time_mask_prob"] == 0.2


def test_a_killed_recogniser_run_resumes_to_the_same_weights(tmp_path: Path, digits: Path,
                                                            tiny_whisper: Path) -> None:
    """SIGKILL mid epoch 2 (masks on, so the resumed generator must draw the same masks), then resume: the same
    weights and history as a run never interrupted."""
    import signal

    from test_training import _finetune, _weights

    params = _first_stages(tmp_path, digits, str(tiny_whisper), freeze={"depth": 1},
                           augment={"time_mask_prob": 0.2, "time_mask_length": 5},
                           finetune={"epochs": 3})
    paths = {"initial": tmp_path / "initial", "encoded": tmp_path / "encoded"}
    reference = _finetune(paths, tmp_path / "reference", params)
    assert reference.returncode == 0, reference.stderr
    killed = _finetune(paths, tmp_path / "run", params, kill_at_step=7)  # 5 steps an epoch: mid epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["epoch"] == 1
    resumed = _finetune(paths, tmp_path / "run", params)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    expected, actual = _weights(tmp_path / "reference" / "model"), _weights(tmp_path / "run" / "model")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert (tmp_path / "run" / "model" / "train_history.json").read_text() == \
        (tmp_path / "reference" / "model" / "train_history.json").read_text()


def test_masks_are_seeded_and_leave_numpy_alone() -> None:
    from crosstune.data.spec_augment import SpecAugment

    features = torch.randn(3, 16, 50)
    masking = SpecAugment(time_prob=0.2, time_length=5, freq_prob=0.25, freq_length=4)
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    first, again = (masking(features, torch.Generator().manual_seed(3)) for _ in range(2))
    assert (np.random.get_state()[1] == before).all()
    assert torch.equal(first, again)
    assert not torch.equal(first, masking(features, torch.Generator().manual_seed(4)))
    zeroed = first == 0
    assert zeroed.all(dim=1).any(dim=1).all()  # every clip has masked frames (at least two spans)
    assert zeroed.all(dim=2).any()  # and masked mel bands
    assert torch.equal(first[~zeroed], features[~zeroed])  # nothing else touched
    assert torch.equal(SpecAugment(0.0, 5, 0.0, 4)(features, torch.Generator()), features)


def test_greedy_and_beam_decoding_of_the_split(tmp_path: Path, digits: Path) -> None:
    """On the real recogniser (its window cut to the data): greedy transcribe_split equals ``generate`` on the
    features, and beam search finds a transcript at least as likely (length-normalised) as greedy's."""
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.transcription.decoding import transcribe_split
    from crosstune.transcription.recogniser import generate_ids
    from crosstune.transfer_model.storage import load_transfer_model

    _first_stages(tmp_path, digits, "whisper-tiny-en")
    model, config = load_transfer_model(tmp_path / "initial")
    split = load_any_split(tmp_path / "encoded" / "test.safetensors")
    batching = batching_for(config, 4, 0)
    greedy, _ = transcribe_split(model, split, batching, "cpu")
    beam, _ = transcribe_split(model, split, batching, "cpu", num_beams=3)
    batch = next(iter(batching.evaluate(split)))
    direct = generate_ids(model.recogniser, features=batch.inputs["input_features"],
                          new_tokens=model.recogniser.generation_config.max_new_tokens)
    assert greedy[:len(direct)] == [text.strip() for text in model.tokenizer.batch_decode(direct,
                                                                                          skip_special_tokens=True)]
    assert len(beam) == len(greedy) == len(split) and all(isinstance(text, str) for text in beam)

    def likelihood(texts: list[str]) -> torch.Tensor:
        from crosstune.transcription.recogniser import IGNORED, encode_transcripts

        labels = encode_transcripts(model.tokenizer, [text or "." for text in texts], 440)
        with torch.inference_mode():
            logits = model(input_features=batch.inputs["input_features"], decoder_labels=labels[:len(direct)])
        scores = torch.log_softmax(logits, -1).gather(-1, labels[:len(direct)].clamp(min=0).unsqueeze(-1))[..., 0]
        kept = labels[:len(direct)] != IGNORED
        return (scores * kept).sum(1) / kept.sum(1)

    assert bool((likelihood(beam) >= likelihood(greedy) - 0.05).all())


def test_export_transcribes_in_the_stock_pipeline_as_predict(tmp_path: Path, digits: Path) -> None:
    """The recogniser directory is a stock Whisper: ``pipeline("automatic-speech-recognition")`` given the same
    16 kHz samples writes the same text as ``crosstune predict`` (here the pretrained model at the data's window,
    whose loops the saved max_new_tokens cuts at the same place in both)."""
    from transformers import pipeline

    from crosstune.data.audio import INT16_SCALE, read_audio, resample
    from crosstune.inference.predictor import Predictor

    _first_stages(tmp_path, digits, "whisper-tiny-en")
    paths = [str(digits / path) for path in pd.read_csv(digits / "test.csv")["audio"]]
    ours = [row["text"] for row in Predictor.from_directory(tmp_path / "initial").predict(paths)]
    stock = pipeline("automatic-speech-recognition", model=str(tmp_path / "initial"))
    samples = []
    for path in paths:  # what crosstune decodes: 16 kHz, stored as int16
        wave = np.round(np.clip(resample(*read_audio(path), 16000), -1, 1) * INT16_SCALE) / INT16_SCALE
        samples.append({"raw": wave.astype(np.float32), "sampling_rate": 16000})
    assert [row["text"].strip() for row in stock(samples, batch_size=4)] == ours


def test_predict_refuses_a_recording_longer_than_the_window(tmp_path: Path, digits: Path, tiny_whisper: Path) -> None:
    """And ONNX export, which covers one forward pass, refuses the recogniser with the way that works."""
    from crosstune.errors import ConfigError
    from crosstune.inference.onnx_export import write_onnx
    from crosstune.inference.predictor import Predictor

    _first_stages(tmp_path, digits, str(tiny_whisper))
    long = tmp_path / "long.wav"
    soundfile.write(long, np.zeros(16000 * 12, dtype=np.float32) + 0.01, 16000)
    with pytest.raises(DataError, match=r"long\.wav: 12\.00 s is longer than this recogniser's \d+ s window"):
        Predictor.from_directory(tmp_path / "initial").predict([str(long)])
    with pytest.raises(ConfigError, match=r"encoder-decoder.*--format safetensors.*optimum-cli export onnx"):
        write_onnx(tmp_path / "initial", tmp_path / "model.onnx")
