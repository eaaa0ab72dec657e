"""The report in words: metric and plot names a person reads, the guard's verdict, the mistakes as a table.

Why: DVC titles a plot with its file path (``metrics/finetune/plots/metrics/train/loss.tsv``) and the
metrics files use keys (``baseline_tfidf_logreg_f1_macro``); those stay in the full tables, and the parts
of the page a reader looks at first say what they show.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

METRIC_WORDS = {
    "f1_macro": "macro-F1", "f1_weighted": "weighted F1", "accuracy": "accuracy", "loss": "loss",
    "precision_macro": "macro precision", "recall_macro": "macro recall", "r2": "R²", "mae": "mean absolute error",
    "mse": "mean squared error", "lr": "learning rate",
}
BASELINE_WORDS = {
    "majority": "most frequent class", "mean": "mean target", "tfidf_logreg": "TF-IDF + logistic regression",
    "tfidf_ridge": "TF-IDF + ridge regression", "pixels_logreg": "pixels + logistic regression",
    "mfcc_logreg": "MFCC + logistic regression",
}
SPLIT_WORDS = {"train": "Training", "validation": "Validation"}
MISTAKES_SHOWN = 20  # most confident mistakes listed in the report
TEXT_SHOWN = 300  # characters of each mistaken text


def metric_words(name: str) -> str:
    return METRIC_WORDS.get(name, name.replace("_", " "))


def plot_title(path: str) -> str:
    """``metrics/finetune/plots/metrics/validation/f1_macro.tsv`` -> ``Validation macro-F1 by training step``;
    other titles (those dvc.yaml already words) stay."""
    match = re.search(r"plots/metrics/(train|validation)/([\w-]+)\.tsv$", path)
    if not match:
        return path
    split, metric = match.groups()
    if metric == "lr":
        return "Learning rate by training step"
    return f"{SPLIT_WORDS[split]} {metric_words(metric)} by training step"


def reword_plots(page: str) -> str:
    """Give DVC's rendered vega-lite specs worded titles and axis names, and show the counts in confusion
    matrices (DVC's template hides them behind a checkbox). A spec that does not parse stays as DVC made it."""
    def reword(match: re.Match[str]) -> str:
        try:
            spec = json.loads(match.group(2))
        except json.JSONDecodeError:
            return match.group(0)
        title = spec.get("title")
        if isinstance(title, dict) and isinstance(title.get("text"), str):
            title["text"] = plot_title(title["text"])
        for layer in _layers(spec):
            y = (layer.get("encoding") or {}).get("y")
            if isinstance(y, dict) and y.get("title") in METRIC_WORDS:
                y["title"] = metric_words(y["title"])
        for param in spec.get("params") or []:
            if param.get("name") == "showValues":
                param["value"] = True
        return f"{match.group(1)}{json.dumps(spec)};"

    return re.sub(r"(var spec = )(\{.*?\});(?=\s*\n\s*vegaEmbed)", reword, page, flags=re.S)


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found = [spec]
    for child in spec.get("layer") or []:
        if isinstance(child, dict):
            found.extend(_layers(child))
    return found


def _score(values: dict[str, Any], key: str) -> str:
    value = values.get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def headline_html(test: dict[str, Any], old: dict[str, Any] | None, compare: str | None,
                  task: str = "classification") -> str:
    """The test metrics, the baselines and the guard's verdict, in sentences (``task``: ``prepare.task``, whose
    headline and metrics are shown)."""
    from crosstune.tasks.registry import TASKS

    headline = TASKS.get(task).headline
    parts = []
    numbers = []
    for key in dict.fromkeys((headline, *TASKS.get(task).baseline_metrics)):
        if isinstance(test.get(key), (int, float)):
            before = f" (was {_score(old, key)} at {html.escape(compare)})" if old and compare and key in old else ""
            numbers.append(f"{metric_words(key)} <b>{_score(test, key)}</b>{before}")
    if numbers:
        size = f" on {test['test_size']} test examples" if "test_size" in test else ""
        parts.append(f"<p>Test {' · '.join(numbers)}{size}.</p>")
    baselines = []
    for key in sorted(test):
        match = re.fullmatch(rf"baseline_(.+)_{headline}", key)
        if match:
            name = BASELINE_WORDS.get(match.group(1), match.group(1))
            baselines.append(f"{html.escape(name)} {_score(test, key)}")
    if baselines:
        verdict = ""
        if isinstance(test.get("beats_all_baselines"), bool):
            verdict = " — the model beats all of them" if test["beats_all_baselines"] else \
                " — <b>the model does not beat all of them</b>"
        parts.append(f"<p>Baselines ({metric_words(headline)}): "
                     f"{', '.join(baselines)}{verdict}.</p>")
    guard = guard_html(test, task)
    if guard:
        parts.append(guard)
    return "\n".join(parts)


def guard_html(test: dict[str, Any], task: str = "classification") -> str:
    """The negative-transfer guard's answer to "did the pretrained weights help?", with its figures."""
    from crosstune.tasks.registry import TASKS

    metric = TASKS.get(task).headline
    if test.get("scratch_model") == "skipped":
        return (f"<p>Did the pretrained weights help? yes: on validation the fine-tuned model "
                f"({float(test[f'guard_finetuned_validation_{metric}']):.3f}) is at least the best learned baseline "
                f"({float(test[f'guard_best_baseline_validation_{metric}']):.3f}, {metric_words(metric)}), which a "
                f"model trained from scratch on this data stays below, so none was trained "
                f"(<code>evaluate.scratch: always</code> trains it). Exported: the "
                f"{html.escape(str(test.get('exported_model', 'finetuned')))} model.</p>")
    if "transfer_gain" not in test:
        return ""
    gain = float(test["transfer_gain"])
    answer = "no: <b>negative transfer</b>" if test.get("negative_transfer") else \
        ("yes" if gain > 0 else "not measurably")
    probe = f"; a linear probe on the frozen pretrained features {_score(test, f'probe_{metric}')}" \
        if f"probe_{metric}" in test else ""
    exported = f" Exported: the {html.escape(str(test['exported_model']))} model." if "exported_model" in test else ""
    validation = [f"{name.replace('finetuned', 'fine-tuned')} {float(test[f'{name}_validation_{metric}']):.3f}"
                  for name in ("finetuned", "probe", "scratch") if f"{name}_validation_{metric}" in test]
    if validation and test.get("guard") == "fallback":
        exported += f" It was chosen on validation ({metric_words(metric)}: {', '.join(validation)})."
    return (f"<p>Did the pretrained weights help? {answer}. Fine-tuned {_score(test, f'finetuned_{metric}')} "
            f"against the same architecture trained from scratch {_score(test, f'scratch_{metric}')} "
            f"({metric_words(metric)}, {gain:+.3f}){probe}.{exported}</p>")


def mistakes_html(predictions: Path, shown: int = MISTAKES_SHOWN, name: str = "metrics/predictions.csv") -> str:
    """The most confident test mistakes of a text model as a table (text, true label, predicted, confidence);
    empty for image and audio models, whose mistakes are pictures (``metrics/misclassified.png``)."""
    import pandas as pd

    if not predictions.is_file():
        return ""
    frame = pd.read_csv(predictions, dtype={"label": str, "predicted": str})
    if not {"text", "label", "predicted"} <= set(frame.columns):
        return ""
    wrong = frame[frame["label"] != frame["predicted"]]
    if "confidence" in wrong.columns:
        wrong = wrong.sort_values("confidence", ascending=False, kind="stable")
    rows = []
    for row in wrong.head(shown).itertuples(index=False):
        text = str(row.text)
        text = text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN].rstrip() + " …"
        confidence = f"{row.confidence:.3f}" if "confidence" in wrong.columns else "—"
        rows.append(f"<tr><td>{html.escape(text)}</td><td>{html.escape(str(row.label))}</td>"
                    f"<td>{html.escape(str(row.predicted))}</td><td class=\"number\">{confidence}</td></tr>")
    if not rows:
        return "<h2>Mistakes</h2>\n<p>No test example is misclassified.</p>"
    return (f"<h2>Mistakes</h2>\n<p>The {len(rows)} most confident of {len(wrong)} misclassified test examples "
            f"(all of them: <code>{html.escape(name)}</code>).</p>\n"
            f'<table class="data mistakes"><thead><tr><th>text</th><th>true</th><th>predicted</th>'
            f"<th>confidence</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
