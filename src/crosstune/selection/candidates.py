"""select-and-load-backbone by numbers: score every candidate's frozen features on a sample of the
target training split with a transferability score (:mod:`crosstune.selection.scores`) and pick the best.

Features are extracted in batches under ``torch.inference_mode`` and kept in a feature store on disk
(:data:`FEATURE_STORE`, keyed by candidate, weights, input size, the exact sample and the code that shapes
the features), so adding one candidate scores only that one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from crosstune.config import BackboneParams
from crosstune.errors import ConfigError
from crosstune.modalities import get_modality
from crosstune.selection.scores import SCORES, SOURCE_SCORES
from crosstune.tasks.registry import TASKS

logger = logging.getLogger(__name__)
FEATURE_STORE = Path(".cache") / "crosstune" / "features"  # features of candidates, by content key
BATCH_SIZE = 32


@dataclass
class SelectionResult:
    """Scores per candidate (higher is better), the seconds each took, and the winner."""

    score_name: str
    scores: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> str:
        return max(self.scores, key=self.scores.__getitem__)


def sample_indices(size: int, cap: int, seed: int) -> np.ndarray:
    """A seeded sample of at most ``cap`` row positions, in ascending order."""
    if size <= cap:
        return np.arange(size)
    return np.sort(np.random.default_rng(seed).choice(size, size=cap, replace=False))


def text_block_features(base: str, params: BackboneParams, texts: Sequence[str], train_texts: Sequence[str],
                         seed: int) -> list[np.ndarray]:
    """Mean-pooled features of ``base`` after its embeddings (index 0) and after each block K (index K), from ONE
    forward pass with every block's output: ``NAME@K`` candidates and the per-block scores of ``freeze.depth:
    auto`` cost no extra pass. Block K's output is exactly what the model truncated to K blocks returns."""
    import torch

    from crosstune.backbones.text import load_backbone, transformer_blocks
    from crosstune.data.token_alignment import WordLists
    from crosstune.heads.registry import mean_pooling

    loaded = load_backbone(replace(params, name=base), train_texts, seed)
    total = len(transformer_blocks(loaded.model))
    loaded.model.eval()
    if isinstance(texts, WordLists):  # a per-word task's sample: one row per word
        return _word_block_features(loaded, texts, params.max_length, total)
    # Tokenize once, then batch texts of similar length together: far fewer padding tokens to run.
    encoded = loaded.tokenizer(list(texts), truncation=True, max_length=params.max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
    columns = [np.zeros((len(encoded), int(loaded.model.config.hidden_size)), dtype=np.float32)
               for _ in range(total + 1)]
    with torch.inference_mode():
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            batch = loaded.tokenizer.pad({"input_ids": [encoded[row] for row in rows]}, return_tensors="pt")
            hidden_states = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         output_hidden_states=True).hidden_states
            for depth, column in enumerate(columns):
                column[rows] = mean_pooling(hidden_states[depth], batch["attention_mask"]).float().numpy()
    return columns


def _word_block_features(loaded: Any, sentences: Sequence[Sequence[str]], max_length: int,
                         total: int) -> list[np.ndarray]:
    """One row per word, sentence by sentence: the state of its first sub-token after the embeddings (index 0)
    and after each block, each sentence read in the windows training reads it in
    (:func:`crosstune.data.token_alignment.encode_tagged`), so every word has a row."""
    import torch

    from crosstune.data.batching import TextBatching
    from crosstune.data.text_encoding import place_outputs
    from crosstune.data.token_alignment import encode_tagged

    words = sum(len(sentence) for sentence in sentences)
    if not getattr(loaded.tokenizer, "is_fast", False):
        raise ConfigError(f"backbone: {type(loaded.tokenizer).__name__} is a slow tokenizer, which cannot align "
                          f"sub-tokens with words; pick a backbone whose directory has a tokenizer.json.")
    split, _ = encode_tagged(loaded.tokenizer, [list(sentence) for sentence in sentences], None, max_length)
    columns = [torch.zeros((words, int(loaded.model.config.hidden_size))) for _ in range(total + 1)]
    with torch.inference_mode():
        for batch in TextBatching(BATCH_SIZE, max_length).evaluate(split):
            hidden_states = loaded.model(**batch.inputs, output_hidden_states=True).hidden_states
            for depth, column in enumerate(columns):
                place_outputs(column, batch, hidden_states[depth].float())
    return [column.numpy() for column in columns]


def _staged_block_features(backbone: Any, inputs: Any) -> list[np.ndarray]:
    """Pooled outputs of a staged (image or audio) backbone after its stem (index 0) and after each block, from
    one pass over ``inputs`` (a list of model-ready batches). The last one is ``forward_features``."""
    import torch

    stages = len(backbone.blocks) + 1
    columns: list[list[torch.Tensor]] = [[] for _ in range(stages)]
    with torch.inference_mode():
        for batch in inputs:
            outputs = batch
            for stage in range(stages):
                outputs = backbone.forward_stages(outputs, stage, stage + 1)
                columns[stage].append(backbone.pool(outputs).float())
    return [torch.cat(column).numpy() for column in columns]


def image_block_features(spec: str, params: BackboneParams, images: Any, seed: int) -> list[np.ndarray]:
    from crosstune.backbones.vision import build_vision_backbone
    from crosstune.data.images import ImageBatcher

    backbone = build_vision_backbone(spec, params.weights, seed, params.image_size)
    backbone.eval()
    batcher = ImageBatcher(backbone.preprocessing)
    return _staged_block_features(backbone, (batcher(images[start : start + BATCH_SIZE])
                                             for start in range(0, len(images), BATCH_SIZE)))


def audio_block_features(spec: str, params: BackboneParams, paths: Sequence[str], seed: int) -> list[np.ndarray]:
    """Pooled features of recordings, decoded at the candidate's own sample rate and clip length."""
    from crosstune.backbones.audio import build_audio_backbone
    from crosstune.data.audio import AudioBatcher, clip_length, decode_audio

    backbone = build_audio_backbone(spec, params.weights, seed)
    rate = backbone.preprocessing.sample_rate
    length = clip_length(paths, rate, params.clip_seconds, backbone.max_seconds)
    backbone.set_clip(length, params.clip_align)
    backbone.eval()
    waveforms = decode_audio(paths, rate, length, params.clip_align)
    batcher = AudioBatcher(backbone.preprocessing)
    return _staged_block_features(backbone, (batcher(waveforms[start : start + BATCH_SIZE])
                                             for start in range(0, len(waveforms), BATCH_SIZE)))


# Every file of the code that shapes the features: reading and encoding the sample (data, modalities), the backbones,
# their pooling (heads) and this extraction. Features stored by another version of any of them are not
# reused: they can differ (a pooling change) or differ in the last bits (batching changes summation
# order), and a fresh clone would then not reproduce them.
FEATURE_CODE = ("selection/candidates.py", "modalities.py", "backbones", "heads", "data")


def feature_code_digest() -> str:
    """A digest of the source of :data:`FEATURE_CODE`, part of every stored feature file's key."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for entry in FEATURE_CODE:
        path = package / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(package).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


_CODE_DIGEST = feature_code_digest()


def _cache_key(spec: str, params: BackboneParams, sample_digest: str, train_digest: str, seed: int) -> str:
    """Everything the features depend on (the training texts too: tiny-bert learns its vocabulary there),
    and the extraction code itself."""
    identity = {"candidate": spec, "weights": params.weights, "image_size": params.image_size,
                "clip_seconds": params.clip_seconds, "clip_align": params.clip_align,
                "max_length": params.max_length, "tiny": str(params.tiny), "sample": sample_digest,
                "train": train_digest, "seed": seed, "code": _CODE_DIGEST}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _sample_digests(modality: str, sample: Any, train_texts: Sequence[str]) -> tuple[str, str]:
    digest = hashlib.sha256(get_modality(modality).sample_digest(sample)).hexdigest()
    return digest, hashlib.sha256(json.dumps(list(train_texts)).encode()).hexdigest()


def _base_name(spec: str, modality: str) -> tuple[str, int | None]:
    return get_modality(modality).candidate_parts(spec)


def candidate_features(params: BackboneParams, candidates: Sequence[str], modality: str, sample: Any,
                       train_texts: Sequence[str], seed: int,
                       cache_dir: Path = FEATURE_STORE) -> tuple[dict[str, Path], dict[str, float]]:
    """Each candidate's pooled features of ``sample`` (texts, or a uint8 image tensor), extracted where
    not cached yet. Returns the cache file of each and the seconds spent extracting (uncached ones).

    Extracting a candidate also stores its base backbone's features after every block (:func:`block_features`)."""
    digest, train_digest = _sample_digests(modality, sample, train_texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {spec: cache_dir / f"{_cache_key(spec, params, digest, train_digest, seed)}.npy" for spec in candidates}
    extraction = _extract_missing(params, [spec for spec in candidates if not paths[spec].is_file()], paths,
                                  modality, sample, train_texts, seed, cache_dir, digest, train_digest)
    return paths, extraction


def block_features(params: BackboneParams, spec: str, modality: str, sample: Any, train_texts: Sequence[str],
                   seed: int, cache_dir: Path = FEATURE_STORE) -> list[np.ndarray]:
    """Pooled features of ``sample`` after ``spec``'s stem or embeddings (index 0) and after each of its blocks
    (index K): what freezing the bottom K blocks leaves as input to the trained part, read from the feature store
    (extracted in the same pass as the candidate's own features)."""
    base, keep = _base_name(spec, modality)
    digest, train_digest = _sample_digests(modality, sample, train_texts)
    path = _blocks_path(cache_dir, base, params, digest, train_digest, seed)
    if not path.is_file():
        _extract_missing(params, [base], {base: cache_dir / f"{_cache_key(base, params, digest, train_digest, seed)}"
                                                             f".npy"},
                         modality, sample, train_texts, seed, cache_dir, digest, train_digest)
    with np.load(path, allow_pickle=False) as stored:
        columns = [stored[f"block_{index}"] for index in range(len(stored.files))]
    if keep is not None:
        if not 1 <= keep < len(columns):
            raise ConfigError(f"params.yaml: backbone: {spec!r} asks for {keep} blocks but {base} has "
                              f"{len(columns) - 1}; use 1..{len(columns) - 1}.")
        columns = columns[: keep + 1]
    return columns


def block_scores(params: BackboneParams, spec: str, modality: str, sample: Any, labels: np.ndarray,
                 train_texts: Sequence[str], seed: int, cache_dir: Path = FEATURE_STORE,
                 task: str = "classification") -> tuple[str, list[float]]:
    """LogME of ``spec``'s features after its stem (index 0) and after each block, whatever ``backbone.score`` ranks
    the candidates with: the scale ``freeze.depth: auto``'s threshold is set in (nats per example and label column;
    a source-classifier score would only see the last block). ``task`` says what the labels are (LogME's form for
    them). Returns the score's name and the values."""
    name = "logme"
    logme = TASKS.get(task).block_transferability()
    columns = block_features(params, spec, modality, sample, train_texts, seed, cache_dir)
    values = [float(logme(column, labels)) if np.isfinite(column).all() else float("-inf")
              for column in columns]
    logger.info("%s after the stem and each block of %s: %s", name, spec, [round(value, 4) for value in values])
    return name, values


def score_candidates(params: BackboneParams, candidates: Sequence[str], modality: str, sample: Any,
                     labels: np.ndarray, train_texts: Sequence[str], seed: int,
                     cache_dir: Path = FEATURE_STORE, task: str = "classification") -> SelectionResult:
    """Score each candidate's pooled features of ``sample`` (texts, or a uint8 image tensor) against
    ``labels`` with ``params.score`` in the form ``task``'s labels call for (LogME's regression form for
    numbers)."""
    score = TASKS.get(task).transferability(params.score)
    on_source_classifier = params.score in SOURCE_SCORES
    if on_source_classifier and not get_modality(modality).source_classifiers:
        raise ConfigError(f"params.yaml: backbone.score: {params.score} scores a pretrained source classifier's "
                          f"predictions of class labels; {modality} backbones have none here. Use one of "
                          f"{SCORES.names()}.")
    result = SelectionResult(params.score)
    paths, extraction = candidate_features(params, candidates, modality, sample, train_texts, seed, cache_dir)
    for spec in candidates:
        started = time.perf_counter()
        features = np.load(paths[spec], allow_pickle=False)
        if on_source_classifier:
            features = _source_probabilities(spec, params, features, seed)
        broken = ~np.isfinite(features).all(axis=1)
        if broken.any():
            message = (f"backbone candidate {spec!r} gives non-finite (NaN or infinite) features for {int(broken.sum())} "
                       f"of {len(features)} sampled training examples: its weights are broken or overflow on this "
                       f"input")
            if len(candidates) == 1:
                raise ConfigError(f"params.yaml: backbone: {message}; fine-tuning it would only produce NaN. Use "
                                  f"other weights or another backbone (or another backbone.image_size).")
            logger.warning("%s; it is ranked last.", message)
            result.scores[spec] = float("-inf")
            continue
        result.scores[spec] = float(score(features, labels))
        result.seconds[spec] = round(extraction.get(spec, 0.0) + time.perf_counter() - started, 3)
        logger.info("candidate %s: %s = %.4f (%d x %d features%s, %.1f s)", spec, params.score, result.scores[spec],
                    *features.shape, "" if spec in extraction else " from cache", result.seconds[spec])
    return result


def _source_probabilities(spec: str, params: BackboneParams, features: np.ndarray, seed: int) -> np.ndarray:
    """The candidate's pretrained classifier (its ImageNet head) applied to its pooled ``features``: the
    source-class probabilities LEEP and NCE score. Shape: (N, D) -> (N, Z)."""
    import torch

    from crosstune.backbones.vision import build_vision_backbone

    backbone = build_vision_backbone(spec, params.weights, seed, params.image_size)
    if backbone.source_classifier is None:
        raise ConfigError(f"params.yaml: backbone.score: {params.score} reads each candidate's pretrained source "
                          f"classifier, and {spec!r} with backbone.weights {params.weights!r} has none (random "
                          f"weights, or a weights file without its classifier). Use one of {SCORES.names()}, or "
                          f"candidates with pretrained heads.")
    return backbone.source_probabilities(torch.from_numpy(features)).double().numpy()


def domain_gaps(params: BackboneParams, candidates: Sequence[str], modality: str, target_sample: Any,
                source_sample: Any, train_texts: Sequence[str], seed: int,
                cache_dir: Path = FEATURE_STORE) -> dict[str, dict[str, float]]:
    """Proxy A-distance and linear MMD between each candidate's source and target features."""
    from crosstune.selection.domain_gap import linear_mmd, proxy_a_distance

    target_paths, _ = candidate_features(params, candidates, modality, target_sample, train_texts, seed, cache_dir)
    source_paths, _ = candidate_features(params, candidates, modality, source_sample, train_texts, seed, cache_dir)
    gaps = {}
    for spec in candidates:
        target = np.load(target_paths[spec], allow_pickle=False)
        source = np.load(source_paths[spec], allow_pickle=False)
        gaps[spec] = {"proxy_a_distance": proxy_a_distance(source, target, seed), "linear_mmd": linear_mmd(source, target)}
        logger.info("candidate %s: domain gap %s", spec, gaps[spec])
    return gaps


def _blocks_path(cache_dir: Path, base: str, params: BackboneParams, digest: str, train_digest: str,
                 seed: int) -> Path:
    return cache_dir / f"{_cache_key(base + '#blocks', params, digest, train_digest, seed)}.npz"


def _extract_missing(params: BackboneParams, missing: Sequence[str], paths: dict[str, Path], modality: str,
                     sample: Any, train_texts: Sequence[str], seed: int, cache_dir: Path, digest: str,
                     train_digest: str) -> dict[str, float]:
    """Extract and cache the features not cached yet (one pass per base backbone, every block's output kept);
    returns each candidate's share of the seconds."""
    from collections import defaultdict

    groups: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for spec in missing:
        base, depth = _base_name(spec, modality)
        groups[base].append((spec, depth))
    seconds: dict[str, float] = {}
    for base, members in groups.items():
        started = time.perf_counter()
        columns = get_modality(modality).block_features(base, params, sample, train_texts, seed)
        for spec, depth in members:
            if depth is not None and not 1 <= depth < len(columns):
                raise ConfigError(f"params.yaml: backbone.candidates: {spec} asks for {depth} blocks but {base} has "
                                  f"{len(columns) - 1}; use 1..{len(columns) - 1}.")
            _save_atomically(paths[spec], lambda temporary, depth=depth: np.save(
                temporary, columns[-1 if depth is None else depth], allow_pickle=False))
        blocks = _blocks_path(cache_dir, base, params, digest, train_digest, seed)
        _save_atomically(blocks, lambda temporary: np.savez(
            temporary, **{f"block_{index}": column for index, column in enumerate(columns)}))
        for spec, _ in members:
            seconds[spec] = (time.perf_counter() - started) / len(members)
    return seconds


def _save_atomically(path: Path, write: Any) -> None:
    """``write(temporary)`` next to ``path``, then rename: a killed run leaves no half-written feature file, and
    two processes filling the store at once (two experiments, two test workers) each write their own temporary
    file and swap in the same content, so neither renames or reads the other's half-written one."""
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
