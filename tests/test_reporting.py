"""crosstune.reporting: the offline report template and its tables."""

from __future__ import annotations

import re

from crosstune.reporting.report import summary_html, tables_html
from crosstune.reporting.template import LIBRARIES, build_template


def test_template_inlines_pinned_libraries_and_loads_nothing() -> None:
    page = build_template()
    for package, version, _ in LIBRARIES:
        assert f"<!-- {package}@{version} from the npm registry, sha256 " in page
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert not re.search(r"<script[^>]+src=", page)


def test_tables_order_and_mark_changes() -> None:
    metrics = {
        "metrics/backbone.json:hidden_size": {"new": 384, "old": 384},
        "metrics/eval.json:f1_macro": {"new": 0.55, "old": 0.50},
        "metrics/eval.json:baseline_majority_f1_macro": {"new": 0.26, "old": 0.26},
        "metrics/finetune/metrics.json:validation.loss": {"new": 1.2, "old": 1.0},
    }
    params = {"finetune.lr": {"new": 5e-5, "old": 1e-4}, "base.seed": {"new": 42, "old": 42}}
    page = tables_html(metrics, params, "main")
    assert page.index("metrics/eval.json:f1_macro") < page.index("metrics/backbone.json:hidden_size")
    assert '<td class="number better">+0.0500</td>' in page
    assert '<td class="number worse">+0.2000</td>' in page  # a higher loss is worse
    assert page.index("base.seed") < page.index("finetune.lr")
    summary = summary_html(metrics, "main", "abc1234")
    assert "test f1_macro <b>0.5500</b> (was 0.5000)" in summary and "compared with main" in summary
