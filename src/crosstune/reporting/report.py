"""``crosstune report``: one self-contained HTML page of a run, optionally against another revision.

Plots come from DVC itself (``dvc plots show`` / ``dvc plots diff REV``) rendered into our template,
which inlines vega, vega-lite and vega-embed (see :mod:`crosstune.reporting.template`), so the page
renders with no network. Metrics and params come from ``dvc metrics diff`` / ``dvc params diff``
(``--json``) and go into tables above the plots.
"""

from __future__ import annotations

import html
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from crosstune.errors import CrosstuneError
from crosstune.io import atomic_path
from crosstune.pipeline import metrics_files
from crosstune.reporting.experiment_ranking import experiments_html
from crosstune.reporting.template import build_template
from crosstune.reporting.wording import (
    drop_image_plot,
    drop_plot_titled,
    drop_uninformative_charts,
    mistakes_html,
    per_class_html,
    reword_plots,
)

logger = logging.getLogger(__name__)
SUMMARY_MARKER = "<!--crosstune:summary-->"
TABLES_MARKER = "<!--crosstune:tables-->"
PREDICTIONS = Path("metrics/predictions.csv")
MISTAKES_PICTURE = "metrics/misclassified.png"
CONFUSION_TITLE = "Test confusion matrix"  # the title dvc.yaml gives the confusion plot


class ReportError(CrosstuneError, RuntimeError):
    """A dvc command behind the report failed (not a DVC repo, unknown revision, ...)."""


def _dvc(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ReportError(f"`dvc {' '.join(args)}` failed in {cwd}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def collect_metrics(repo: Path, compare: str | None) -> dict[str, dict[str, Any]]:
    """``{"file:key": {"new": value, "old": value-or-None}}`` for every metric of the workspace."""
    revision = compare or "HEAD"
    raw = json.loads(_dvc("metrics", "diff", revision, "--all", "--json", "--targets", *metrics_files.FILES,
                          cwd=repo) or "{}")
    rows: dict[str, dict[str, Any]] = {}
    for path, entries in raw.items():
        for key, values in entries.items():
            if compare or values.get("new") is not None:  # alone, the workspace's own: not keys only HEAD has
                rows[f"{path}:{key}"] = {"new": values.get("new"), "old": values.get("old") if compare else None}
    return rows


def collect_params(repo: Path, compare: str | None) -> dict[str, dict[str, Any]]:
    """``{"section.key": {"new": value, "old": value-or-None}}`` for every param of the workspace."""
    raw = json.loads(_dvc("params", "diff", compare or "HEAD", "--all", "--json", cwd=repo) or "{}")
    rows: dict[str, dict[str, Any]] = {}
    for entries in raw.values():
        for key, values in entries.items():
            if compare or values.get("new") is not None:
                rows[key] = {"new": values.get("new"), "old": values.get("old") if compare else None}
    return rows


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(json.dumps(value) if isinstance(value, (list, dict)) else str(value))


def _change_cell(key: str, new: Any, old: Any) -> str:
    numeric = isinstance(new, (int, float)) and isinstance(old, (int, float)) and not isinstance(new, bool)
    if not numeric or new == old:
        return "<td></td>"
    delta = new - old
    from crosstune.experiments.sweep import lower_is_better

    name = key.rsplit(":", 1)[-1].split(".")[-1]
    improved = (delta < 0) if lower_is_better(name) or name.endswith(("_wer", "_cer")) else (delta > 0)
    return f'<td class="number {"better" if improved else "worse"}">{delta:+.4f}</td>'


def _table(title: str, rows: dict[str, dict[str, Any]], compare: str | None, metrics: bool, level: int = 2,
           named: bool = False) -> str:
    """``rows`` as a table of name, value (and the other revision's, and the change); ``named``: the names are
    HTML already."""
    header = "<th>name</th><th>workspace</th>" + (f"<th>{html.escape(compare)}</th><th>change</th>" if compare else "")
    body = []
    for key, values in rows.items():
        changed = compare is not None and values["new"] != values["old"]
        cells = f'<td>{key if named else html.escape(key)}</td><td class="number">{_format(values["new"])}</td>'
        if compare:
            cells += f'<td class="number">{_format(values["old"])}</td>'
            cells += _change_cell(values.get("key", key), values["new"], values["old"]) if metrics else "<td></td>"
        body.append(f'<tr class="{"changed" if changed else ""}">{cells}</tr>')
    return (f'<h{level}>{title}</h{level}>\n<table class="data"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _metric_order(key: str) -> tuple[int, str]:
    path = key.split(":", 1)[0]
    order = list(metrics_files.FILES)
    rank = order.index(path) if path in order else len(order)
    return rank, key


def training_record(repo: Path) -> dict[str, Any]:
    """The fine-tuned model's per-epoch validation history, its finetune params and kept epoch, as the workspace
    holds them (empty where the pipeline has not run): what the headline's epoch sentences read."""
    model = repo / "models" / "finetuned"
    try:
        history = json.loads((model / "train_history.json").read_text(encoding="utf-8"))
        finetune = json.loads((model / "params.json").read_text(encoding="utf-8")).get("finetune", {})
        best = json.loads((repo / "metrics" / "finetune" / "metrics.json").read_text(encoding="utf-8"))["best_epoch"]
    except (OSError, ValueError, KeyError, AttributeError):
        return {}
    return {"history": history, "finetune": finetune, "best_epoch": best}


def summary_html(metrics: dict[str, dict[str, Any]], compare: str | None, revision: str,
                 task: str = "classification", training: dict[str, Any] | None = None) -> str:
    """Title and headline in words (test metrics, baselines, the guard's verdict), shown above the plots."""
    from crosstune.reporting.wording import headline_html

    prefix = f"{metrics_files.TEST}:"
    test = {key[len(prefix):]: values["new"] for key, values in metrics.items() if key.startswith(prefix)}
    old = {key[len(prefix):]: values["old"] for key, values in metrics.items()
           if key.startswith(prefix) and values["old"] is not None} if compare else None
    subtitle = f"workspace at {html.escape(revision)}" + (
        f", compared with {html.escape(compare)}" if compare else
        "; <code>crosstune report --compare REV</code> sets it beside another commit, branch or experiment")
    return (f"<h1>crosstune report</h1>\n<p class=\"subtitle\">{subtitle}</p>\n"
            f"{headline_html(test, old, compare, task, training)}")


def _belongs(key: str, owned: tuple[str, ...]) -> bool:
    return any(key == name or key.startswith(name + ".") for name in owned)


def params_in_use(params: dict[str, dict[str, Any]], modality: str, task: str) -> tuple[dict[str, dict[str, Any]],
                                                                                        list[str]]:
    """The params that bear on a run of ``modality`` and ``task``, and the keys left out: those only another
    modality or task reads (:attr:`Modality.own_params`, :attr:`Task.own_params`)."""
    from crosstune.modalities import MODALITIES
    from crosstune.tasks.registry import TASKS

    foreign = tuple(key for name in MODALITIES if name != modality for key in MODALITIES.get(name).own_params
                    if not _belongs(key, MODALITIES.get(modality).own_params if modality in MODALITIES else ()))
    foreign += tuple(key for name in TASKS if name != task for key in TASKS.get(name).own_params
                     if not _belongs(key, TASKS.get(task).own_params if task in TASKS else ()))
    hidden = sorted(key for key in params if _belongs(key, foreign))
    return {key: values for key, values in params.items() if key not in hidden}, hidden


def _grouped_metrics(metrics: dict[str, dict[str, Any]], per_class: set[str]) -> dict[str, dict[str, dict]]:
    """The metrics by file, test metrics first; the per-class keys that the per-class table shows are left out."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for key in sorted(metrics, key=_metric_order):
        path, name = key.split(":", 1)
        if path == metrics_files.TEST and name in per_class:
            continue
        groups.setdefault(path, {})[name] = metrics[key]
    return groups


def tables_html(metrics: dict[str, dict[str, Any]], params: dict[str, dict[str, Any]], compare: str | None,
                per_class: set[str] = frozenset(), hidden: list[str] = ()) -> str:
    """The metrics grouped by what they measure (test metrics first) and the params of this run's modality and
    task, with the other revision beside them."""
    from crosstune.reporting.wording import metric_words

    parts = ['<h2>Metrics</h2>\n<p>Named in words; where the words are not the key with spaces, the key '
             '<code>dvc metrics diff</code> prints is beside them'
             + ("; the per-class scores are in the table above.</p>" if per_class else ".</p>")]
    for path, rows in _grouped_metrics(metrics, set(per_class)).items():
        title = f"{metrics_files.FILES.get(path, path)} <code>{html.escape(path)}</code>"
        named = {f"{metric_words(name)} <code>{html.escape(name)}</code>"
                 if metric_words(name).lower() != name.replace("_", " ") else html.escape(metric_words(name)):
                 {**values, "key": name}
                 for name, values in rows.items()}
        parts.append(_table(title, named, compare, metrics=True, level=3, named=True))
    ordered_params = {key: params[key] for key in sorted(params)}
    parts.append(_table("Params", ordered_params, compare, metrics=False))
    if hidden:
        parts.append(f"<p>Left out: {len(hidden)} params only other inputs or tasks read "
                     f"({html.escape(', '.join(hidden))}).</p>")
    return "\n".join(parts)


def inline_images(page: str, directory: Path) -> str:
    """Replace ``<img src="static/...">`` (image plots DVC copies beside its page) with data URIs, so the
    report stays one self-contained file."""
    import base64
    import mimetypes
    import re

    def embed(match: re.Match[str]) -> str:
        source = directory / match.group(1)
        if not source.is_file():
            return match.group(0)
        kind = mimetypes.guess_type(source.name)[0] or "image/png"
        return f'<img src="data:{kind};base64,{base64.b64encode(source.read_bytes()).decode("ascii")}"'

    return re.sub(r'<img src="(?!data:)([^"]+)"', embed, page)


def _select_metric(params: dict[str, dict[str, Any]]) -> str:
    value = (params.get("finetune.select_metric") or {}).get("new")
    return str(value) if value else "f1_macro"


def build_report(output: str | Path, compare: str | None = None, repo: str | Path = ".") -> Path:
    """Write the report page to ``output`` and return its path."""
    repo = Path(repo).resolve()
    output = Path(output)
    try:
        template_text = build_template()
    except FileNotFoundError as error:
        raise ReportError(str(error)) from error
    with tempfile.TemporaryDirectory() as workdir:
        template = Path(workdir) / "template.html"
        template.write_text(template_text, encoding="utf-8")
        plot_args = ["plots", "diff", compare] if compare else ["plots", "show"]
        _dvc(*plot_args, "--html-template", str(template), "-o", str(Path(workdir) / "out"), cwd=repo)
        page = inline_images((Path(workdir) / "out" / "index.html").read_text(encoding="utf-8"), Path(workdir) / "out")
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=False).stdout.strip() or "an uncommitted repository"
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                             text=True, check=False).stdout.strip()
    if changed:  # the figures are the workspace's, which the commit alone does not reproduce
        revision += f" with uncommitted changes ({len(changed.splitlines())} files; git status lists them)"
    metrics, params = collect_metrics(repo, compare), collect_params(repo, compare)
    page = reword_plots(drop_uninformative_charts(page))
    task = str((params.get("prepare.task") or {}).get("new") or "classification")
    page = page.replace(SUMMARY_MARKER, summary_html(metrics, compare, revision, task, training_record(repo)))
    prefix = f"{metrics_files.TEST}:"
    test = {key[len(prefix):]: values["new"] for key, values in metrics.items() if key.startswith(prefix)}
    from crosstune.data.prepared_dir import read_modality
    from crosstune.tasks.registry import TASKS

    own = TASKS.get(task).report_sections(test, repo / PREDICTIONS) if task in TASKS else None
    per_class = per_class_html(test) if own is None else ""
    classes = {key[: -len("_support")] for key in test if key.endswith("_support")}  # per_class_html's rows
    per_class_keys = {f"{name}_{part}" for name in classes for part in ("precision", "recall", "f1", "support")}
    modality = read_modality(repo / "data" / "prepared") if (repo / "data" / "prepared" / "labels.json").is_file() \
        else ""
    params_shown, hidden = params_in_use(params, modality, task) if modality else (params, [])
    mistakes = mistakes_html(repo / PREDICTIONS) if own is None else ""
    if own is not None or mistakes:  # the tables show the mistakes; the picture of them would repeat it
        page = drop_image_plot(page, MISTAKES_PICTURE)
    if task in TASKS and not TASKS.get(task).confusion_matrix:
        page = drop_plot_titled(page, CONFUSION_TITLE)
    sections = [*(own if own is not None else [per_class, mistakes]), experiments_html(repo, _select_metric(params)),
                tables_html(metrics, params_shown, compare, per_class_keys, hidden)]
    page = page.replace(TABLES_MARKER, "\n".join(section for section in sections if section))
    with atomic_path(output) as temporary:
        temporary.write_text(page, encoding="utf-8")
    logger.info("wrote %s", output)
    return output
