"""crosstune.reporting: the offline report template and its tables."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT

from crosstune.experiments.dvc_queue import Experiment
from crosstune.reporting.experiment_ranking import (
    parallel_coordinates_spec,
    ranked,
    varied_params,
)
from crosstune.reporting.report import params_in_use, summary_html, tables_html
from crosstune.reporting.template import LIBRARIES, build_template
from crosstune.reporting.wording import (
    guard_html,
    headline_html,
    mistakes_html,
    plot_title,
    reword_plots,
)


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
    assert page.index("<code>metrics/eval.json</code>") < page.index("<code>metrics/backbone.json</code>")
    assert "<h3>Test split <code>metrics/eval.json</code></h3>" in page and "macro-F1 <code>f1_macro</code>" in page
    assert '<td class="number better">+0.0500</td>' in page
    assert '<td class="number worse">+0.2000</td>' in page  # a higher loss is worse
    assert page.index("base.seed") < page.index("finetune.lr")
    summary = summary_html(metrics, "main", "abc1234")
    assert "Test macro-F1 <b>0.550</b> (was 0.500 at main)" in summary and "compared with main" in summary
    assert "most frequent class: macro-F1 0.260 (ahead); the model is ahead on every metric." in summary


@pytest.mark.parametrize("path, title", [
    ("metrics/finetune/plots/metrics/train/loss.tsv", "Training loss by training step"),
    ("metrics/finetune/plots/metrics/train/lr.tsv", "Learning rate by training step"),
    ("metrics/finetune/plots/metrics/validation/f1_macro.tsv", "Validation macro-F1 by training step"),
    ("Test confusion matrix", "Test confusion matrix"),
])
def test_plot_titles_in_words(path: str, title: str) -> None:
    assert plot_title(path) == title


def test_rendered_specs_get_worded_titles_and_confusion_counts() -> None:
    page = ('<script>\n var spec = {"title": {"text": "metrics/finetune/plots/metrics/validation/loss.tsv"}, '
            '"layer": [{"encoding": {"y": {"field": "loss", "title": "loss"}}}]};\n vegaEmbed("#a", spec);\n'
            ' var spec = {"title": {"text": "Test confusion matrix"}, "params": [{"name": "showValues", '
            '"bind": {"input": "checkbox"}}]};\n vegaEmbed("#b", spec);\n var spec = {broken;\n vegaEmbed("#c", spec);')
    reworded = reword_plots(page)
    assert '"text": "Validation loss by training step"' in reworded
    assert '"name": "showValues", "bind": {"input": "checkbox"}, "value": true' in reworded
    assert "var spec = {broken;" in reworded  # what does not parse stays as DVC wrote it


def test_guard_verdict_in_words() -> None:
    helped = {"transfer_gain": 0.07, "negative_transfer": False, "finetuned_f1_macro": 0.52, "scratch_f1_macro": 0.45,
              "probe_f1_macro": 0.39, "exported_model": "finetuned"}
    assert "Did the pretrained weights help? Measured: yes. Fine-tuned 0.520 against the same architecture trained " \
           "from scratch 0.450 (macro-F1, +0.070); a linear probe on the frozen pretrained features 0.390. " \
           "Exported: the finetuned model." in guard_html(helped)
    hurt = {**helped, "transfer_gain": -0.1, "negative_transfer": True, "exported_model": "scratch"}
    assert "no: <b>negative transfer</b>" in guard_html(hurt) and "the scratch model" in guard_html(hurt)
    assert "chosen on validation" not in guard_html(hurt)  # report mode: nothing was chosen
    fallback = {**helped, "guard": "fallback", "exported_model": "probe", "finetuned_validation_f1_macro": 0.41,
                "probe_validation_f1_macro": 0.47, "scratch_validation_f1_macro": 0.4}
    assert "Exported: the probe model. It was chosen on validation (macro-F1: fine-tuned 0.410, probe 0.470, " \
           "scratch 0.400)." in guard_html(fallback)
    assert guard_html({"f1_macro": 0.5}) == ""
    assert "<b>behind on every metric</b>" in headline_html({"f1_macro": 0.3, "baseline_tfidf_logreg_f1_macro": 0.4,
                                                            "beats_all_baselines": False}, None, None)


# The text default's test metrics as measured (float32, seed 42): ahead of TF-IDF on macro-F1, behind on accuracy.
DEFAULT_TEST = {"f1_macro": 0.575799, "accuracy": 0.720317, "f1_weighted": 0.711, "baseline_majority_f1_macro": 0.264,
                "baseline_majority_accuracy": 0.654, "baseline_majority_f1_weighted": 0.517,
                "baseline_tfidf_logreg_f1_macro": 0.530, "baseline_tfidf_logreg_accuracy": 0.744,
                "baseline_tfidf_logreg_f1_weighted": 0.704, "beats_all_baselines": True}


def test_headline_says_ahead_on_one_metric_and_behind_on_another_and_why() -> None:
    page = headline_html(DEFAULT_TEST, None, None, training={"finetune": {"class_weights": "balanced"}})
    assert "beats all" not in page
    assert ("TF-IDF + logistic regression: macro-F1 0.530 (ahead), accuracy 0.744 (<b>behind</b>), weighted F1 0.704 "
            "(ahead); the model is ahead on some, behind on others.") in page
    assert "most frequent class: macro-F1 0.264 (ahead), accuracy 0.654 (ahead)" in page
    assert "macro-F1 weighs every class alike and accuracy every example" in page
    assert "class-balanced weights" in page
    unweighted = headline_html(DEFAULT_TEST, None, None, training={"finetune": {"class_weights": "none"}})
    assert "macro-F1 weighs every class alike" in unweighted and "class-balanced weights" not in unweighted
    ahead = {**DEFAULT_TEST, "baseline_tfidf_logreg_accuracy": 0.70}
    assert "weighs every class alike" not in headline_html(ahead, None, None)  # no disagreement, no excuse


def test_headline_names_a_skipped_guard_as_assumed_not_measured() -> None:
    skipped = {**DEFAULT_TEST, "scratch_model": "skipped", "guard_finetuned_validation_f1_macro": 0.495,
               "guard_best_baseline_validation_f1_macro": 0.392, "exported_model": "finetuned"}
    sentence = guard_html(skipped)
    assert "Measured: on validation the fine-tuned model (0.495 macro-F1) is at least the best learned baseline " \
           "(0.392)." in sentence
    assert "Assumed, not measured on this data: that a model trained from scratch would stay below" in sentence
    assert "<code>evaluate.scratch: always</code> measures it" in sentence


HISTORY = [{"epoch": 1, "loss": 1.07, "f1_macro": 0.333}, {"epoch": 2, "loss": 1.28, "f1_macro": 0.481},
           {"epoch": 3, "loss": 1.54, "f1_macro": 0.471}, {"epoch": 4, "loss": 1.78, "f1_macro": 0.495}]


def test_headline_says_which_epoch_was_kept_by_the_smoothed_rule() -> None:
    training = {"history": HISTORY, "best_epoch": 3,
                "finetune": {"select_metric": "f1_macro", "select_window": 3, "class_weights": "balanced"}}
    page = headline_html(DEFAULT_TEST, None, None, training=training)
    assert ("Kept epoch 3 of 4: the best validation macro-F1 averaged with its neighbours "
            "(<code>finetune.select_window: 3</code>), 0.482 averaged, 0.471 at that epoch alone; the curve ends at "
            "0.495 (epoch 4).") in page
    single = {**training, "best_epoch": 4, "finetune": {**training["finetune"], "select_window": 1}}
    assert "Kept epoch 4 of 4: the best validation macro-F1 (0.495)." in headline_html(DEFAULT_TEST, None, None,
                                                                                         training=single)


def test_headline_warns_of_over_confidence_when_validation_loss_rises_with_the_metric() -> None:
    from crosstune.reporting.wording import overconfidence_html

    warning = overconfidence_html(HISTORY, "f1_macro")
    assert "Validation loss rose from 1.07 to 1.78 over epochs 1 to 4 while validation macro-F1 went from 0.333 " \
           "to 0.495" in warning and "finetune.label_smoothing: 0.1" in warning
    falling = [{**entry, "loss": 1.5 - 0.1 * index} for index, entry in enumerate(HISTORY)]
    assert overconfidence_html(falling, "f1_macro") == ""
    collapsing = [{**entry, "f1_macro": 0.5 - 0.1 * index} for index, entry in enumerate(HISTORY)]
    assert overconfidence_html(collapsing, "f1_macro") == ""  # loss and metric both worse: over-fitting, no warning


def test_mistakes_table_lists_the_most_confident_first(tmp_path: Path) -> None:
    path = tmp_path / "predictions.csv"
    pd.DataFrame({"text": ["fine <b>", "bad", "good", "x" * 400], "label": ["pos", "neg", "pos", "neg"],
                  "predicted": ["neg", "neg", "neg", "pos"], "confidence": [0.6, 0.9, 0.8, 0.7]}).to_csv(path, index=False)
    table = mistakes_html(path)
    assert "3 most confident of 3 misclassified" in table
    assert table.index("good") < table.index("xxxx") < table.index("fine &lt;b&gt;")  # escaped, by confidence
    assert "x" * 300 + " …" in table and "bad" not in table
    images = tmp_path / "images.csv"
    pd.DataFrame({"image": ["a.png"], "label": ["1"], "predicted": ["2"]}).to_csv(images, index=False)
    assert mistakes_html(images) == "" and mistakes_html(tmp_path / "absent.csv") == ""


def _experiment(name: str, lr: float, depth: object, value: float) -> Experiment:
    return Experiment(name, name, "success", {"finetune": {"lr": lr, "epochs": 4}, "freeze": {"depth": depth}},
                      {"metrics/finetune/metrics.json": {"best_validation": {"f1_macro": value}},
                       "metrics/eval.json": {"f1_macro": value - 0.01}})


def test_experiments_rank_and_parallel_coordinates_cover_the_varied_params() -> None:
    experiments = [_experiment("a", 1e-4, 0, 0.5), _experiment("b", 5e-5, "all", 0.7), _experiment("c", 2e-5, 3, 0.6),
                   Experiment("d", "d", "failed")]
    best_first = ranked(experiments, "f1_macro")
    assert [e.name for e in best_first] == ["b", "c", "a"]
    assert [e.name for e in ranked(experiments, "loss")] == []  # no validation loss recorded: nothing to rank
    keys = varied_params(best_first)
    assert keys == ["finetune.lr", "freeze.depth"]
    spec = parallel_coordinates_spec(best_first, keys, "f1_macro")
    points = {(row["experiment"], row["axis"]): row["position"] for row in spec["data"]["values"]}
    assert points[("b", "validation f1_macro")] == 1.0 and points[("a", "validation f1_macro")] == 0.0
    assert points[("a", "finetune.lr")] == 1.0 and points[("c", "finetune.lr")] == 0.0
    assert {points[(name, "freeze.depth")] for name in "abc"} == {0.0, 0.5, 1.0}  # mixed values placed by order


def test_per_class_table_shows_each_class_with_its_support() -> None:
    from crosstune.reporting.wording import per_class_html

    test = {"f1_macro": 0.5, "neutral_precision": 0.344828, "neutral_recall": 0.277778, "neutral_f1": 0.307692,
            "neutral_support": 36, "positive_precision": 0.84, "positive_recall": 0.82, "positive_f1": 0.83,
            "positive_support": 248}
    table = per_class_html(test)
    assert table.index("neutral") < table.index("positive")
    assert ('<tr><td>neutral</td><td class="number">0.345</td><td class="number">0.278</td>'
            '<td class="number">0.308</td><td class="number">36</td></tr>') in table
    assert per_class_html({"r2": 0.4}) == ""  # regression: no classes


def test_per_class_keys_are_left_to_the_per_class_table() -> None:
    metrics = {"metrics/eval.json:f1_macro": {"new": 0.5, "old": None},
               "metrics/eval.json:red_recall": {"new": 0.4, "old": None}}
    page = tables_html(metrics, {}, None, per_class={"red_recall"})
    assert "<code>f1_macro</code>" in page and "red_recall" not in page and "per-class scores are in the table" in page


def test_the_params_of_other_inputs_and_tasks_are_left_out() -> None:
    params = {key: {"new": 1, "old": None} for key in (
        "finetune.lr", "prepare.text_column", "prepare.image_column", "augment.crop_scale_min",
        "augment.time_mask_prob", "backbone.clip_seconds", "backbone.tiny.hidden_size", "prepare.tag_scheme",
        "evaluate.num_beams", "backbone.weights")}
    shown, hidden = params_in_use(params, "audio", "transcription")
    assert set(shown) == {"finetune.lr", "augment.time_mask_prob", "backbone.clip_seconds", "evaluate.num_beams",
                          "backbone.weights"}
    assert hidden == sorted(set(params) - set(shown))
    shown, _ = params_in_use(params, "text", "token_classification")
    assert set(shown) == {"finetune.lr", "prepare.text_column", "backbone.tiny.hidden_size", "prepare.tag_scheme",
                          "backbone.weights"}


def test_every_params_key_a_modality_or_task_owns_exists() -> None:
    """A misspelt key in ``own_params`` would hide nothing and say nothing."""
    from crosstune.config import read_params_file
    from crosstune.modalities import MODALITIES
    from crosstune.tasks.registry import TASKS

    defaults = read_params_file(REPO_ROOT / "params.yaml")
    owned = [key for registry in (MODALITIES, TASKS) for name in registry for key in registry.get(name).own_params]
    for key in owned:
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not a params key"
            node = node[part]


def _vega_div(identifier: str, spec: dict) -> str:
    import json

    return (f'\n    <div id = "{identifier}">\n        <script type = "text/javascript">\n            var spec = '
            f"{json.dumps(spec)};\n            vegaEmbed('#{identifier}', spec);\n        </script>\n    </div>\n")


def test_charts_of_nothing_or_of_one_bar_are_dropped_and_others_stay() -> None:
    from crosstune.reporting.wording import drop_uninformative_charts

    one = _vega_div("one", {"mark": {"type": "bar"}, "data": {"values": [{"score": 1.0, "candidate": "minilm"}]}})
    two = _vega_div("two", {"mark": "bar", "data": {"values": [{"score": 1.0}, {"score": 0.5}]}})
    line = _vega_div("line", {"layer": [{"mark": "line"}], "data": {"values": [{"step": 0}]}})
    empty = _vega_div("empty", {})
    page = drop_uninformative_charts(f"<body>{one}{two}{line}{empty}</body>")
    assert "vegaEmbed('#one'" not in page and "vegaEmbed('#two'" in page and "vegaEmbed('#line'" in page
    assert "vegaEmbed('#empty'" not in page


def test_the_picture_of_mistakes_can_be_dropped_and_other_images_stay() -> None:
    from crosstune.reporting.wording import drop_image_plot

    def image_div(name: str) -> str:
        return (f'<div\n  id="{name}"\n  style="border:1px solid black;text-align:center;">\n<p>{name}</p>\n'
                f'<div\n style="border:1px dotted black;">\n<p>workspace</p>\n<img src="static/a.png">\n</div>\n'
                f'<div\n style="border:1px dotted black;">\n<p>HEAD</p>\n<img src="static/b.png">\n</div>\n</div>')

    page = drop_image_plot(image_div("metrics/misclassified.png") + image_div("metrics/other.png"),
                           "metrics/misclassified.png")
    assert "misclassified" not in page and page.count("<img ") == 2 and page.startswith('<div\n  id="metrics/other')


def test_the_confusion_matrix_is_dropped_by_its_title_and_only_classification_keeps_it() -> None:
    import yaml

    from crosstune.reporting.report import CONFUSION_TITLE
    from crosstune.reporting.wording import drop_plot_titled
    from crosstune.tasks.registry import TASKS

    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    titles = [entry[name].get("title") for entry in plots if isinstance(entry, dict) for name in entry]
    assert CONFUSION_TITLE in titles  # the report finds the plot dvc.yaml names
    confusion = _vega_div("confusion", {"title": {"text": CONFUSION_TITLE}, "mark": "rect"})
    curve = _vega_div("curve", {"title": "Training loss by training step", "mark": "line"})
    page = drop_plot_titled(confusion + curve, CONFUSION_TITLE)
    assert "vegaEmbed('#confusion'" not in page and "vegaEmbed('#curve'" in page
    assert [name for name in TASKS if TASKS.get(name).confusion_matrix] == ["classification"]


def test_curves_lose_the_smoothing_slider() -> None:
    import json

    from crosstune.reporting.wording import reword_plots

    spec = {"title": {"text": "metrics/finetune/plots/metrics/train/loss.tsv"}, "mark": "line",
            "params": [{"name": "smooth", "value": 0.001, "bind": {"input": "range", "min": 0.001, "max": 1}}]}
    page = reword_plots(_vega_div("loss", spec))
    reworded = json.loads(re.search(r"var spec = (\{.*?\});", page, flags=re.S).group(1))
    assert reworded["params"] == [{"name": "smooth", "value": 0.001}]
    assert reworded["title"]["text"] == "Training loss by training step"
