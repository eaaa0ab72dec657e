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
from crosstune.reporting.experiment_ranking import experiments_html
from crosstune.reporting.template import build_template
from crosstune.reporting.wording import mistakes_html, per_class_html, reword_plots

logger = logging.getLogger(__name__)
SUMMARY_MARKER = "<!--crosstune:summary-->"
TABLES_MARKER = "<!--crosstune:tables-->"
METRICS_FILE_ORDER = ("metrics/eval.json", "metrics/finetune/metrics.json", "metrics/freeze.json")
PREDICTIONS = Path("metrics/predictions.csv")
LOWER_IS_BETTER = ("loss", "mse", "mae")


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
    raw = json.loads(_dvc("metrics", "diff", revision, "--all", "--json", cwd=repo) or "{}")
    rows: dict[str, dict[str, Any]] = {}
    for path, entries in raw.items():
        for key, values in entries.items():
            rows[f"{path}:{key}"] = {"new": values.get("new"), "old": values.get("old") if compare else None}
    return rows


def collect_params(repo: Path, compare: str | None) -> dict[str, dict[str, Any]]:
    """``{"section.key": {"new": value, "old": value-or-None}}`` for every param of the workspace."""
    raw = json.loads(_dvc("params", "diff", compare or "HEAD", "--all", "--json", cwd=repo) or "{}")
    rows: dict[str, dict[str, Any]] = {}
    for entries in raw.values():
        for key, values in entries.items():
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
    improved = (delta < 0) if key.rsplit(":", 1)[-1].split(".")[-1] in LOWER_IS_BETTER else (delta > 0)
    return f'<td class="number {"better" if improved else "worse"}">{delta:+.4f}</td>'


def _table(title: str, rows: dict[str, dict[str, Any]], compare: str | None, metrics: bool) -> str:
    header = "<th>name</th><th>workspace</th>" + (f"<th>{html.escape(compare)}</th><th>change</th>" if compare else "")
    body = []
    for key, values in rows.items():
        changed = compare is not None and values["new"] != values["old"]
        cells = f'<td>{html.escape(key)}</td><td class="number">{_format(values["new"])}</td>'
        if compare:
            cells += f'<td class="number">{_format(values["old"])}</td>'
            cells += _change_cell(key, values["new"], values["old"]) if metrics else "<td></td>"
        body.append(f'<tr class="{"changed" if changed else ""}">{cells}</tr>')
    return f'<h2>{title}</h2>\n<table class="data"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _metric_order(key: str) -> tuple[int, str]:
    path = key.split(":", 1)[0]
    rank = METRICS_FILE_ORDER.index(path) if path in METRICS_FILE_ORDER else len(METRICS_FILE_ORDER)
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

    prefix = "metrics/eval.json:"
    test = {key[len(prefix):]: values["new"] for key, values in metrics.items() if key.startswith(prefix)}
    old = {key[len(prefix):]: values["old"] for key, values in metrics.items()
           if key.startswith(prefix) and values["old"] is not None} if compare else None
    subtitle = f"workspace at {html.escape(revision)}" + (
        f", compared with {html.escape(compare)}" if compare else
        "; <code>crosstune report --compare REV</code> sets it beside another commit, branch or experiment")
    return (f"<h1>crosstune report</h1>\n<p class=\"subtitle\">{subtitle}</p>\n"
            f"{headline_html(test, old, compare, task, training)}")


def tables_html(metrics: dict[str, dict[str, Any]], params: dict[str, dict[str, Any]], compare: str | None) -> str:
    """Every metric (test metrics first) and every param, with the other revision beside them."""
    ordered_metrics = {key: metrics[key] for key in sorted(metrics, key=_metric_order)}
    ordered_params = {key: params[key] for key in sorted(params)}
    return "\n".join([_table("Metrics", ordered_metrics, compare, metrics=True),
                      _table("Params", ordered_params, compare, metrics=False)])


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
    page = reword_plots(page)
    task = str((params.get("prepare.task") or {}).get("new") or "classification")
    page = page.replace(SUMMARY_MARKER, summary_html(metrics, compare, revision, task, training_record(repo)))
    prefix = "metrics/eval.json:"
    test = {key[len(prefix):]: values["new"] for key, values in metrics.items() if key.startswith(prefix)}
    sections = [per_class_html(test), mistakes_html(repo / PREDICTIONS),
                experiments_html(repo, _select_metric(params)), tables_html(metrics, params, compare)]
    page = page.replace(TABLES_MARKER, "\n".join(section for section in sections if section))
    with atomic_path(output) as temporary:
        temporary.write_text(page, encoding="utf-8")
    logger.info("wrote %s", output)
    return output
