"""The report's experiments section: every DVC experiment of the commit ranked, and a parallel-coordinates
plot of the params they vary against the validation metric.

Why: after `crosstune sweep` or `crosstune tune` the question is "which params matter?", which a table of
one run beside another cannot answer; one line per experiment across the varied params, coloured by the
metric, shows it at a glance (Inselberg, "The plane with parallel coordinates", The Visual Computer 1985).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from crosstune.experiments.dvc_queue import Experiment, baseline_experiments
from crosstune.experiments.sweep import (
    TEST_METRICS,
    VALIDATION_METRICS,
    lower_is_better,
)
from crosstune.reporting.wording import metric_words

PLOT_ID = "crosstune_experiments_parallel"


def _flat(prefix: str, value: Any, into: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, into)
    else:
        into[prefix] = value
    return into


def varied_params(experiments: list[Experiment]) -> list[str]:
    """The params keys whose values differ between the experiments (the ones worth a column)."""
    flat = [_flat("", experiment.params, {}) for experiment in experiments]
    keys = sorted({key for values in flat for key in values})
    return [key for key in keys if len({json.dumps(values.get(key), sort_keys=True) for values in flat}) > 1]


def ranked(experiments: list[Experiment], metric: str) -> list[Experiment]:
    """Succeeded experiments with a validation value, best first."""
    scored = [experiment for experiment in experiments
              if experiment.state == "success" and experiment.value(VALIDATION_METRICS, f"best_validation.{metric}")
              is not None]
    sign = 1.0 if lower_is_better(metric) else -1.0
    return sorted(scored, key=lambda e: (sign * float(e.value(VALIDATION_METRICS, f"best_validation.{metric}")),
                                         e.name))


def parallel_coordinates_spec(experiments: list[Experiment], keys: list[str], metric: str) -> dict[str, Any]:
    """A vega-lite spec: one line per experiment over the varied params (each axis scaled to its own range;
    text values placed by their sorted order) and the validation metric, coloured by that metric."""
    axes = [*keys, f"validation {metric}"]
    rows = []
    for experiment in experiments:
        values = _flat("", experiment.params, {})
        values[axes[-1]] = experiment.value(VALIDATION_METRICS, f"best_validation.{metric}")
        rows.append((experiment.name, values))
    data = []
    for axis in axes:
        raw = [values.get(axis) for _, values in rows]
        numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in raw)
        order = sorted({json.dumps(value) for value in raw})
        positions = [float(value) if numeric else float(order.index(json.dumps(value))) for value in raw]
        low, high = min(positions), max(positions)
        for (name, values), position, value in zip(rows, positions, raw):
            data.append({"experiment": name, "axis": axis, "position": 0.5 if high == low else
                         (position - low) / (high - low), "value": json.dumps(value) if not numeric else value,
                         "metric": values[axes[-1]]})
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": f"Params of each experiment against the validation {metric_words(metric)}",
                  "anchor": "middle"},
        "width": max(120 * len(axes), 360), "height": 300,
        "data": {"values": data},
        "encoding": {
            "x": {"field": "axis", "type": "nominal", "sort": axes, "title": None, "axis": {"labelAngle": 0}},
            "y": {"field": "position", "type": "quantitative", "title": "each axis scaled to its own range",
                  "axis": {"labels": False, "ticks": False}},
        },
        "layer": [
            {"mark": {"type": "line", "strokeWidth": 2, "opacity": 0.8},
             "encoding": {"detail": {"field": "experiment"},
                          "color": {"field": "metric", "type": "quantitative", "title": metric_words(metric),
                                    "scale": {"scheme": "viridis", "reverse": lower_is_better(metric)}}}},
            {"mark": {"type": "point", "filled": True, "size": 40},
             "encoding": {"color": {"field": "metric", "type": "quantitative", "legend": None,
                                    "scale": {"scheme": "viridis", "reverse": lower_is_better(metric)}},
                          "tooltip": [{"field": "experiment"}, {"field": "axis"}, {"field": "value"},
                                      {"field": "metric", "format": ".4f", "title": metric}]}},
        ],
    }


def experiments_html(repo: Path, metric: str) -> str:
    """The section for the commit's experiments; empty when it has fewer than two that succeeded."""
    experiments = ranked(baseline_experiments(repo), metric)
    if len(experiments) < 2:
        return ""
    keys = varied_params(experiments)
    header = ["rank", "experiment", *keys, f"validation {metric_words(metric)}", "test macro-F1", "test accuracy"]
    body = []
    for rank, experiment in enumerate(experiments, 1):
        values = _flat("", experiment.params, {})
        test = experiment.file(TEST_METRICS)
        cells = [str(rank), html.escape(experiment.name), *[html.escape(json.dumps(values.get(key))) for key in keys],
                 f"{experiment.value(VALIDATION_METRICS, f'best_validation.{metric}'):.4f}",
                 *[f"{test[key]:.4f}" if isinstance(test.get(key), (int, float)) else "—"
                   for key in ("f1_macro", "accuracy")]]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    spec = json.dumps(parallel_coordinates_spec(experiments, keys, metric)).replace("</", "<\\/")  # stays in <script>
    return (f"<h2>Experiments</h2>\n<p>{len(experiments)} experiments of this commit (`dvc exp show`), best "
            f"validation {metric_words(metric)} first; bring one into the workspace with "
            f"<code>dvc exp apply NAME</code>.</p>\n"
            f'<table class="data"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>\n'
            f'<div class="plots"><div id="{PLOT_ID}"><script type="text/javascript">\n'
            f"var spec = {spec};\nvegaEmbed('#{PLOT_ID}', spec);\n</script></div></div>")
