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
from typing import Any, Callable, Sequence

METRIC_WORDS = {
    "f1_macro": "macro-F1", "f1_weighted": "weighted F1", "accuracy": "accuracy", "loss": "loss",
    "precision_macro": "macro precision", "recall_macro": "macro recall", "r2": "R²", "mae": "mean absolute error",
    "mse": "mean squared error", "lr": "learning rate", "entity_f1": "entity F1",
    "entity_precision": "entity precision", "entity_recall": "entity recall", "token_accuracy": "word accuracy",
    "wer": "WER", "cer": "CER",
}
BASELINE_WORDS = {
    "majority": "most frequent class", "mean": "mean target", "tfidf_logreg": "TF-IDF + logistic regression",
    "tfidf_ridge": "TF-IDF + ridge regression", "pixels_logreg": "pixels + logistic regression",
    "mfcc_logreg": "MFCC + logistic regression", "crf": "CRF over word features",
    "dictionary": "dictionary of the training entities",
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
            if param.get("name") == "smooth":  # no smoothing slider under every curve: the raw curve is shown
                param.pop("bind", None)
        return f"{match.group(1)}{json.dumps(spec)};"

    return re.sub(r"(var spec = )(\{.*?\});(?=\s*\n\s*vegaEmbed)", reword, page, flags=re.S)


def _drop_vega_plots(page: str, unwanted: Callable[[dict[str, Any]], bool]) -> str:
    """Remove each of DVC's vega plots whose spec is ``unwanted``; a spec that does not parse stays."""
    def drop(match: re.Match[str]) -> str:
        try:
            spec = json.loads(match.group(2))
        except json.JSONDecodeError:
            return match.group(0)
        return "" if unwanted(spec) else match.group(0)

    return re.sub(r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (\{.*?\});'
                  r"\s*vegaEmbed\('#\1', spec\);\s*</script>\s*</div>", drop, page, flags=re.S)


def _uninformative(spec: dict[str, Any]) -> bool:
    """No data at all (a per-block chart of a task that scores no blocks), or a bar chart with one bar."""
    values = (spec.get("data") or {}).get("values")
    if not spec or values == []:
        return True
    marks = [layer.get("mark") for layer in _layers(spec)]
    bars = any(mark == "bar" or isinstance(mark, dict) and mark.get("type") == "bar" for mark in marks)
    return bars and isinstance(values, list) and len(values) <= 1


def drop_uninformative_charts(page: str) -> str:
    """Remove DVC's charts that show nothing (an empty table's) or rank one thing (the candidates chart of a run
    that named its backbone)."""
    return _drop_vega_plots(page, _uninformative)


def drop_plot_titled(page: str, title: str) -> str:
    """Remove DVC's vega plot titled ``title`` (a confusion matrix of transcripts or tag sequences: one row per
    distinct sentence says nothing)."""
    def titled(spec: dict[str, Any]) -> bool:
        name = spec.get("title")
        return (name.get("text") if isinstance(name, dict) else name) == title

    return _drop_vega_plots(page, titled)


def drop_image_plot(page: str, name: str) -> str:
    """Remove DVC's image plot ``name`` (every revision's copy) from the page: the report shows the same content
    better as a table (a text model's mistakes)."""
    inner = r'\s*<div[^>]*>\s*<p>[^<]*</p>\s*<img [^>]*>\s*</div>'
    return re.sub(rf'<div\s+id="[^"]+"\s+style="[^"]*">\s*<p>{re.escape(name)}</p>(?:{inner})*\s*</div>', "", page)


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
                  task: str = "classification", training: dict[str, Any] | None = None) -> str:
    """The test metrics, the model against each baseline, the guard's verdict and the kept epoch, in plain
    sentences that hold on every metric shown (``task``: ``prepare.task``; ``training``: the fine-tuned model's
    per-epoch ``history`` and ``finetune`` params, when the workspace has them)."""
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
    finetune = (training or {}).get("finetune", {})
    parts.append(baselines_html(test, task, finetune.get("class_weights")))
    parts.append(guard_html(test, task))
    history = (training or {}).get("history") or []
    if history and finetune:
        parts.append(kept_epoch_html(history, finetune.get("select_metric", headline),
                                     int(finetune.get("select_window", 1)), training.get("best_epoch")))
        parts.append(overconfidence_html(history, finetune.get("select_metric", headline)))
    return "\n".join(part for part in parts if part)


def _baselines(test: dict[str, Any]) -> list[str]:
    """The baselines eval.json scores (``baseline_<name>_<metric>`` for a metric some task reports for baselines)."""
    from crosstune.tasks.registry import TASKS

    metrics = sorted({metric for name in TASKS for metric in TASKS.get(name).baseline_metrics}, key=len, reverse=True)
    pattern = re.compile(rf"baseline_(.+?)_({'|'.join(map(re.escape, metrics))})")
    return sorted({match.group(1) for key in test if (match := pattern.fullmatch(key))})


def baselines_html(test: dict[str, Any], task: str = "classification", class_weights: str | None = None) -> str:
    """The model against each baseline on the headline metric and on the task's other baseline metrics, ahead or
    behind on each; one sentence on why macro-F1 and accuracy disagree when they do."""
    from crosstune.tasks.registry import TASKS

    spec = TASKS.get(task)
    metrics = [name for name in dict.fromkeys((spec.headline, *spec.baseline_metrics))
               if isinstance(test.get(name), (int, float))]
    rows, mixed = [], False
    for baseline in _baselines(test):
        verdicts = []
        for metric in metrics:
            theirs = test.get(f"baseline_{baseline}_{metric}")
            if not isinstance(theirs, (int, float)):
                continue
            ahead = spec.is_better(metric, float(test[metric]), float(theirs))
            tied = abs(float(test[metric]) - float(theirs)) < 5e-4
            word = "level" if tied else ("ahead" if ahead else "<b>behind</b>")
            verdicts.append((word, f"{metric_words(metric)} {float(theirs):.3f} ({word})"))
        if not verdicts:
            continue
        words = {word for word, _ in verdicts} - {"level"}
        mixed |= len(words) > 1
        summary = "ahead on every metric" if words == {"ahead"} else \
            ("<b>behind on every metric</b>" if words == {"<b>behind</b>"} else "ahead on some, behind on others")
        rows.append(f"<li>{html.escape(BASELINE_WORDS.get(baseline, baseline))}: "
                    f"{', '.join(text for _, text in verdicts)}; the model is {summary}.</li>")
    if not rows:
        return ""
    why = ""
    if mixed and {"f1_macro", "accuracy"} <= set(metrics):
        weighting = (" The model is trained with class-balanced weights (<code>finetune.class_weights: balanced"
                     "</code>), which trade hits on the frequent class for recall on the rare ones.") \
            if class_weights == "balanced" else ""
        why = (f"<p>Macro-F1 and accuracy disagree because macro-F1 weighs every class alike and accuracy every "
               f"example, so a model can win on the rare classes and lose on the frequent one.{weighting}</p>")
    return (f"<p>Against the baselines (the model: "
            f"{', '.join(f'{metric_words(m)} {float(test[m]):.3f}' for m in metrics)}):</p>"
            f"<ul class=\"baselines\">{''.join(rows)}</ul>{why}")


def kept_epoch_html(history: list[dict[str, Any]], metric: str, window: int, best_epoch: int | None) -> str:
    """Which epoch's weights were kept and why: the validation metric averaged over ``window`` neighbouring epochs
    (``finetune.select_window``), raw and smoothed values named, so the kept score beside the curve is read
    right."""
    from crosstune.training.epoch_selection import smoothed

    values = [float(entry[metric]) for entry in history if isinstance(entry.get(metric), (int, float))]
    if not values or best_epoch is None or not 1 <= best_epoch <= len(values):
        return ""
    raw = values[best_epoch - 1]
    if window <= 1:
        return (f"<p>Kept epoch {best_epoch} of {len(values)}: the best validation {metric_words(metric)} "
                f"({raw:.3f}).</p>")
    averaged = smoothed(values, best_epoch, window // 2)
    last = f"; the curve ends at {values[-1]:.3f} (epoch {len(values)})" if best_epoch != len(values) else ""
    return (f"<p>Kept epoch {best_epoch} of {len(values)}: the best validation {metric_words(metric)} averaged with "
            f"its neighbours (<code>finetune.select_window: {window}</code>), {averaged:.3f} averaged, {raw:.3f} at "
            f"that epoch alone{last}. Averaging keeps an epoch that is good with its neighbours, not one lucky "
            f"spike on {len(values)} validation scores.</p>")


def overconfidence_html(history: list[dict[str, Any]], metric: str, epochs: int = 2) -> str:
    """A plain warning when validation loss rose for ``epochs`` epochs or more in a row while the metric did not
    fall: the model grows more confident, also in its mistakes."""
    losses = [float(entry["loss"]) for entry in history if isinstance(entry.get("loss"), (int, float))]
    scores = [float(entry[metric]) for entry in history if isinstance(entry.get(metric), (int, float))]
    if len(losses) != len(scores) or len(losses) <= epochs:
        return ""
    start = 0  # first epoch (0-based) of the current run of rising validation losses
    for end in range(len(losses)):
        if end + 1 < len(losses) and losses[end + 1] > losses[end]:
            continue  # still rising
        if end - start >= epochs and scores[end] >= scores[start]:
            return (f"<p class=\"warning\">Validation loss rose from {losses[start]:.2f} to {losses[end]:.2f} "
                    f"over epochs {start + 1} to {end + 1} while validation {metric_words(metric)} went from "
                    f"{scores[start]:.3f} to {scores[end]:.3f}: the model grows over-confident (sure of its "
                    f"mistakes too), so its scores are not probabilities to trust. To try: "
                    f"<code>finetune.label_smoothing: 0.1</code>, fewer <code>finetune.epochs</code>, or a lower "
                    f"<code>finetune.lr</code>.</p>")
        start = end + 1
    return ""


def guard_html(test: dict[str, Any], task: str = "classification") -> str:
    """The negative-transfer guard's answer to "did the pretrained weights help?": what was measured, and what was
    assumed named as such."""
    from crosstune.tasks.registry import TASKS

    metric = TASKS.get(task).headline
    if test.get("guard_reference") == "zero_shot":
        return _zero_shot_guard_html(test, metric)
    if test.get("scratch_model") == "skipped":
        return (f"<p>Did the pretrained weights help? Measured: on validation the fine-tuned model "
                f"({float(test[f'guard_finetuned_validation_{metric}']):.3f} {metric_words(metric)}) is at least the "
                f"best learned baseline ({float(test[f'guard_best_baseline_validation_{metric}']):.3f}). Assumed, not "
                f"measured on this data: that a model trained from scratch would stay below that baseline (it did on "
                f"every task and seed of the project's benchmarks), so none was trained; "
                f"<code>evaluate.scratch: always</code> measures it. Exported: the "
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
    return (f"<p>Did the pretrained weights help? Measured: {answer}. Fine-tuned {_score(test, f'finetuned_{metric}')} "
            f"against the same architecture trained from scratch {_score(test, f'scratch_{metric}')} "
            f"({metric_words(metric)}, {gain:+.3f}){probe}.{exported}</p>")


def _zero_shot_guard_html(test: dict[str, Any], metric: str) -> str:
    """The guard of a whole pretrained model (a recogniser): fine-tuned against the same model untouched."""
    gain = float(test["finetuning_gain"])
    answer = "no: <b>fine-tuning made it worse</b>" if test.get("negative_transfer") else \
        ("yes" if gain > 0 else "not measurably")
    exported = html.escape(str(test.get("exported_model", "finetuned"))).replace("probe", "zero-shot")
    validation = [f"{label} {float(test[f'{name}_validation_{metric}']):.4f}"
                  for name, label in (("finetuned", "fine-tuned"), ("probe", "zero-shot"))
                  if f"{name}_validation_{metric}" in test]
    chosen = f" It was chosen on validation ({metric_words(metric)}: {', '.join(validation)})." \
        if validation and test.get("guard") == "fallback" else ""
    return (f"<p>Did fine-tuning help? Measured: {answer}. Fine-tuned {_score(test, f'finetuned_{metric}')} against "
            f"the pretrained model as released, without fine-tuning (zero-shot), {_score(test, f'probe_{metric}')} "
            f"({metric_words(metric)} on test, {gain:+.4f} in favour of fine-tuning). Exported: the {exported} "
            f"model.{chosen} Not compared: a model trained from random weights (on a few hundred recordings it "
            f"transcribes nothing).</p>")


def rows_table_html(title: str, note: str, columns: Sequence[str], rows: dict[str, Sequence[str]]) -> str:
    """A report section of one row per name (a class, a speaker) and its numbers, formatted by the caller: the
    shape of every per-class and per-speaker table; empty without rows. ``columns`` starts with the names'."""
    if not rows:
        return ""
    header = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f'<td class="number">{cell}</td>' for cell in cells)
                   + "</tr>" for name, cells in rows.items())
    return (f"<h2>{title}</h2>\n" + (f"<p>{note}</p>\n" if note else "")
            + f'<table class="data"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>')


def per_class_html(test: dict[str, Any]) -> str:
    """Precision, recall and F1 of each class on the test split, with its number of examples (classification: the
    ``<class>_precision`` ... ``<class>_support`` keys of eval.json), so the rare classes are seen at a glance."""
    classes = [key[: -len("_support")] for key in test if key.endswith("_support")]
    rows = {name: [*(_score(test, f"{name}_{part}") for part in ("precision", "recall", "f1")),
                   str(int(test[f"{name}_support"]))] for name in classes}
    return rows_table_html("Per class", "", ["class", "precision", "recall", "F1", "test examples"], rows)


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
