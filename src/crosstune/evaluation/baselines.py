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
BASELINE_TASKS: dict[str, str] = {}  # the task a baseline predicts for
BASELINE_MODALITIES: dict[str, tuple[str, ...] | None] = {}  # the inputs it reads; None: any (it ignores them)
PIXELS_SIDE = 16  # pixel baselines see images downsampled to 16x16 grey


def _register(name: str, task: str,
              modalities: tuple[str, ...] | None = ("text",)) -> Callable[[BaselineFactory], BaselineFactory]:
    BASELINE_TASKS[name] = task
    BASELINE_MODALITIES[name] = modalities
    return BASELINES.register(name)


def suits(name: str, task: str, modality: str) -> bool:
    """Whether baseline ``name`` predicts for ``task`` from ``modality`` inputs."""
    modalities = BASELINE_MODALITIES[name]
    return BASELINE_TASKS[name] == task and (modalities is None or modality in modalities)


@_register("majority", "classification", None)
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


@_register("mean", "regression", None)
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


@_register("crf", "token_classification")
def crf(seed: int) -> Any:
    """A linear-chain CRF (Lafferty et al. 2001, https://dl.acm.org/doi/10.5555/645530.655813) over hand-made
    word features (:func:`crosstune.evaluation.tagging_baselines.word_features`), trained by L-BFGS with
    elastic-net penalties c1 = c2 = 0.1: p(y | x) ∝ exp(sum_t w · f(y_{t-1}, y_t, x, t)). The standard
    pre-transformer NER baseline (sklearn-crfsuite's tutorial recipe)."""
    from crosstune.evaluation.tagging_baselines import CrfTagger

    return CrfTagger(c1=0.1, c2=0.1)


@_register("dictionary", "token_classification")
def dictionary(seed: int) -> Any:
    """Every entity seen in training, matched again (longest first, case-insensitive) in new sentences: what
    a gazetteer finds without learning anything."""
    from crosstune.evaluation.tagging_baselines import DictionaryTagger

    return DictionaryTagger()


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
    """What every baseline learns from and predicts: (training inputs, their labels, ``split``'s inputs), as the
    model's modality provides them (:meth:`crosstune.modalities.Modality.baseline_inputs`: texts from the prepared
    tables, 16x16 grey pixels for images, MFCC statistics for audio); every labelled training row counts, the
    target's and the source domain's (``splits``: the encoded splits, ``config``: the model's)."""
    from crosstune.modalities import get_modality

    return get_modality(config["modality"]).baseline_inputs(splits, prepared_dir, config, split)


def baseline_scores(names: Sequence[str], config: dict[str, Any], targets: Sequence[Any], train_inputs: Any,
                    train_targets: Sequence[Any], inputs: Any, seed: int) -> dict[str, dict[str, float]]:
    """Each baseline's metrics on ``inputs`` against ``targets`` (encoded labels), as the task scores them."""
    from crosstune.tasks.registry import TASKS

    task, labels = TASKS.get(config["task"]), config["labels"]
    return {name: task.score_baseline(targets, run_baseline(name, task.name, train_inputs, train_targets, inputs, seed,
                                                            config["modality"]), labels)
            for name in names}


def run_baseline(name: str, task: str, train_texts: Sequence[Any], train_targets: Sequence[Any],
                 test_texts: Sequence[Any], seed: int, modality: str = "text") -> list[Any]:
    """Fit baseline ``name`` on the training inputs (texts, or feature rows: pixels for images, MFCC statistics
    for audio) and predict the test ones."""
    BASELINES.check(name, "evaluate.baselines")
    if not suits(name, task, modality):
        suitable = sorted(key for key in BASELINES if suits(key, task, modality))
        raise ValueError(f"params.yaml: evaluate.baselines: {name!r} does not suit a {task} task on {modality} "
                         f"data; use {suitable}.")
    estimator = BASELINES.get(name)(seed)
    estimator.fit(train_texts, list(train_targets))
    return list(estimator.predict(test_texts))
