"""Baselines reported beside the fine-tuned model, so users see whether transfer helped at all.

Each baseline fits on the prepared training texts and predicts the test texts in seconds. They are also the
negative-transfer guard's cheap from-scratch learners: the scratch stage trains its model only when the
fine-tuned model does not validate above every one of them (:func:`crosstune.evaluation.guard.scratch_decision`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from crosstune.registry import Registry

BaselineFactory = Callable[[int], Any]  # seed -> an unfitted scikit-learn estimator on raw texts
BASELINES: Registry[BaselineFactory] = Registry("baseline")
BASELINE_TASKS: dict[str, str] = {}
BASELINE_MODALITIES: dict[str, tuple[str, ...]] = {}
PIXELS_SIDE = 16  # pixel baselines see images downsampled to 16x16 grey


def _register(name: str, task: str, modalities: tuple[str, ...] = ("text",)) -> Callable[[BaselineFactory], BaselineFactory]:
    BASELINE_TASKS[name] = task
    BASELINE_MODALITIES[name] = modalities
    return BASELINES.register(name)


@_register("majority", "classification", ("text", "image", "audio"))
def majority(seed: int) -> Any:
    """Always the most frequent training label."""
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="most_frequent")


@_register("tfidf_logreg", "classification")
def tfidf_logreg(seed: int) -> Any:
    """Word 1-2-gram TF-IDF and class-balanced logistic regression: the classic strong text baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed),
    )


@_register("mean", "regression", ("text", "image", "audio"))
def mean(seed: int) -> Any:
    """Always the mean training target."""
    from sklearn.dummy import DummyRegressor

    return DummyRegressor(strategy="mean")


@_register("tfidf_ridge", "regression")
def tfidf_ridge(seed: int) -> Any:
    """TF-IDF features and ridge regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), Ridge(random_state=seed))


@_register("pixels_logreg", "classification", ("image",))
def pixels_logreg(seed: int) -> Any:
    """Class-balanced logistic regression on standardised 16x16 grey pixels: what no transfer gives."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                              random_state=seed))


@_register("mfcc_logreg", "classification", ("audio",))
def mfcc_logreg(seed: int) -> Any:
    """Class-balanced logistic regression on standardised MFCC statistics (mean and standard deviation of 13
    coefficients and their deltas over voiced frames): the classic speech baseline without pretraining."""
    return pixels_logreg(seed)


def audio_mfcc(waveforms: Any, sample_rate: int) -> Any:
    """Shape: (N, S) int16 tensor -> (N, 52) float array of MFCC statistics
    (:func:`crosstune.backbones.audio_features.mfcc_statistics`)."""
    from crosstune.backbones.audio_features import mfcc_statistics
    from crosstune.data.audio import waveforms_to_float

    return mfcc_statistics(waveforms_to_float(waveforms), sample_rate)


def image_pixels(images: Any) -> Any:
    """Shape: (N, C, H, W) uint8 tensor -> (N, 16*16) float array of grey pixels."""
    from torchvision.transforms.v2 import functional as F

    grey = images.float().mean(dim=1, keepdim=True)
    return F.resize(grey, [PIXELS_SIDE, PIXELS_SIDE], antialias=True).flatten(1).numpy() / 255.0


def baseline_inputs(splits: dict[str, Any], prepared_dir: str, config: dict[str, Any],
                    split: str) -> tuple[Any, list[Any], Any]:
    """What every baseline learns from and predicts: (training inputs, their labels, ``split``'s inputs).

    Baselines learn from every labelled training row, the target's and the source domain's: texts from the
    prepared tables, 16x16 grey pixels for images, MFCC statistics for audio (``splits``: the encoded splits,
    ``config``: the model's)."""
    import numpy as np
    import pandas as pd

    from crosstune.data.prepared import has_source, read_split

    modality, labels = config["modality"], config["labels"]
    if modality in ("image", "audio"):
        sample_rate = int(config["backbone"]["preprocessing"]["sample_rate"]) if modality == "audio" else 0

        def rows(values: Any) -> Any:
            return image_pixels(values) if modality == "image" else audio_mfcc(values, sample_rate)

        def inputs(part: Any) -> Any:
            return part.images if modality == "image" else part.waveforms

        parts = [splits["train"]] + ([splits["source"]] if len(splits["source"]) else [])
        masks = [part.labels >= 0 for part in parts]
        train_inputs = np.concatenate([rows(inputs(part)[mask]) for part, mask in zip(parts, masks)])
        train_targets = [labels[int(i)] for part, mask in zip(parts, masks) for i in part.labels[mask]]
        return train_inputs, train_targets, rows(inputs(splits[split]))
    frames = [read_split(prepared_dir, "train")] + ([read_split(prepared_dir, "source")]
                                                    if has_source(prepared_dir) else [])
    training = pd.concat(frames, ignore_index=True)
    if config["task"] == "classification":
        training = training[training["label"] != ""]
    return training["text"], list(training["label"]), read_split(prepared_dir, split)["text"]


def baseline_scores(names: Sequence[str], config: dict[str, Any], targets: Sequence[Any], train_inputs: Any,
                    train_targets: Sequence[Any], inputs: Any, seed: int) -> dict[str, dict[str, float]]:
    """Each baseline's metrics on ``inputs`` against ``targets`` (label indices, or values for regression)."""
    from crosstune.evaluation.metrics import classification_metrics, regression_metrics

    task, labels = config["task"], config["labels"]
    scores: dict[str, dict[str, float]] = {}
    for name in names:
        predictions = run_baseline(name, task, train_inputs, train_targets, inputs, seed, config["modality"])
        if task == "classification":
            index = {label: position for position, label in enumerate(labels)}
            scores[name] = classification_metrics(list(targets), [index[label] for label in predictions], labels)
        else:
            scores[name] = regression_metrics(list(targets), predictions)
    return scores


def run_baseline(name: str, task: str, train_texts: Sequence[Any], train_targets: Sequence[Any],
                 test_texts: Sequence[Any], seed: int, modality: str = "text") -> list[Any]:
    """Fit baseline ``name`` on the training inputs (texts, or feature rows: pixels for images, MFCC statistics
    for audio) and predict the test ones."""
    if BASELINE_TASKS[name] != task or modality not in BASELINE_MODALITIES[name]:
        suitable = sorted(key for key, kind in BASELINE_TASKS.items()
                          if kind == task and modality in BASELINE_MODALITIES[key])
        raise ValueError(f"params.yaml: evaluate.baselines: {name!r} does not suit a {task} task on {modality} "
                         f"data; use {suitable}.")
    estimator = BASELINES.get(name)(seed)
    as_input = list if modality == "text" else (lambda rows: rows)
    estimator.fit(as_input(train_texts), list(train_targets))
    return list(estimator.predict(as_input(test_texts)))
