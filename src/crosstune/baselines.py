"""Baselines reported beside the fine-tuned model, so users see whether transfer helped at all.

Each baseline fits on the prepared training texts and predicts the test texts in seconds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from crosstune.registry import Registry

BaselineFactory = Callable[[int], Any]  # seed -> an unfitted scikit-learn estimator on raw texts
BASELINES: Registry[BaselineFactory] = Registry("baseline")
BASELINE_TASKS: dict[str, str] = {}


def _register(name: str, task: str) -> Callable[[BaselineFactory], BaselineFactory]:
    BASELINE_TASKS[name] = task
    return BASELINES.register(name)


@_register("majority", "classification")
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


@_register("mean", "regression")
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


def run_baseline(name: str, task: str, train_texts: Sequence[str], train_targets: Sequence[Any],
                 test_texts: Sequence[str], seed: int) -> list[Any]:
    """Fit baseline ``name`` on the training split and predict the test texts."""
    if BASELINE_TASKS[name] != task:
        suitable = sorted(key for key, kind in BASELINE_TASKS.items() if kind == task)
        raise ValueError(f"params.yaml: evaluate.baselines: {name!r} does not suit a {task} task; use {suitable}.")
    estimator = BASELINES.get(name)(seed)
    estimator.fit(list(train_texts), list(train_targets))
    return list(estimator.predict(list(test_texts)))
