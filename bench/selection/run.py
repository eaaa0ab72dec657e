"""Does a transferability score pick the backbone that fine-tunes best? Six tasks, genuinely different candidates.

Per task (bench/tasks.py) the data is prepared once (split of base.seed 42). Then two phases, each run alone on
the machine (the first is timed):

1. ``score``: every candidate's frozen, pooled features of the same seeded sample of up to 500 training examples
   (``backbone.selection_samples``) are extracted through the library (``crosstune.selection.candidates``, a fresh
   feature store) and scored with LogME, H-score, the 5-fold linear probe and 5-NN, plus LEEP and NCE for the
   candidates that keep a pretrained source classifier; the seconds of each extraction and each score are kept.
2. ``finetune``: every candidate is fine-tuned with one fixed budget, the task's recipe, through the pipeline's
   stage functions (backbone, attach-head, cache, finetune, evaluate with ``evaluate.guard: off``), for each seed,
   and scored on the test split.

Candidates: text (``text`` sentiment, ``topic`` condition): all-mpnet-base-v2 (``make zoo``), all-MiniLM-L6-v2,
its static-embedding distillation and a random tiny BERT; images (``fashion``, ``digits``): EfficientNet-Lite0/1/2
(ImageNet), the MNIST CNN (at its own 28 px) and a random tiny CNN; speech (``speech`` digits, ``speakers``):
Whisper tiny.en's encoder, the GE2E speaker encoder, the Silero VAD encoder and a random 1-D CNN.

The budget: text, the text default (full fine-tuning, 4 epochs, AdamW 1e-4) at 128 tokens; images and speech,
the task's example recipe with the stem and the bottom half of the blocks frozen (the fashion example's own
8 of 17 on Lite0), since full fine-tuning of a BatchNorm CNN on 1,500 upscaled digits is a recipe failure, not
a transferability fact (bench/selection's earlier README).

    .venv/bin/python bench/selection/run.py score                 # ~5 minutes; bench/selection/results.json
    .venv/bin/python bench/selection/run.py finetune --seeds 42,1,2
    .venv/bin/python bench/selection/table.py                     # the README's tables
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import tasks  # noqa: E402  (bench/tasks.py: the benchmarks' shared tasks)
from workdir import merge, record_run  # noqa: E402  (bench/workdir.py; also puts src/ on the path)

TEXT = ["mpnet-base", "minilm-l6", "minilm-static", "tiny-bert"]
IMAGES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "mnist-cnn", "tiny-cnn"]
SPEECH = ["whisper-tiny-en", "ge2e-speaker", "silero-vad", "tiny-audio-cnn"]
CANDIDATES = {"text": TEXT, "topic": TEXT, "fashion": IMAGES, "digits": IMAGES, "speech": SPEECH, "speakers": SPEECH}
FEATURE_SCORES = ["logme", "hscore", "linear_probe", "knn"]
SOURCE_SCORES = ["leep", "nce"]
TEXT_TOKENS = 128  # tokens per review for every text candidate (the default keeps 256; mpnet-base is 5x MiniLM)
OWN_SIZE = {"mnist-cnn": 28}  # candidates whose weights only make sense at their own input side
QUIET = {"evaluate": {"guard": "off", "baselines": ["majority"]}}


def task_params(task: str, work: Path) -> dict:
    params = merge(tasks.task_params(task, work), QUIET)
    if tasks.MODALITIES[task] == "text":
        params = merge(params, {"backbone": {"max_length": TEXT_TOKENS}, "finetune": {"max_length": TEXT_TOKENS}})
    return params


def candidate_params(params: dict, candidate: str, modality: str, num_blocks: int | None = None) -> dict:
    """The task's params for one candidate: its name, its own input side where it has one, and (with
    ``num_blocks``) the budget's freeze depth: 0 for text, the bottom half of the blocks otherwise."""
    extra: dict = {"backbone": {"name": candidate, "select": "name"}}
    if candidate in OWN_SIZE:
        extra["backbone"]["image_size"] = OWN_SIZE[candidate]
    if num_blocks is not None:
        extra["freeze"] = {"depth": 0 if modality == "text" else num_blocks // 2}
    return merge(params, extra)


def prepare(task: str, work: Path) -> tuple[dict, Path]:
    from crosstune.pipeline.prepare import prepare_stage

    params = task_params(task, work)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    if not (work / "prepared" / "labels.json").is_file():
        prepare_stage(params["data"]["train"], params["data"]["test"], str(work / "prepared"), str(path))
    return params, path


def score_task(task: str, work: Path) -> dict:
    """Phase 1: every candidate's features (fresh store) and every score, each timed."""
    from crosstune.config import BackboneParams, load_section
    from crosstune.data.images import decode_images
    from crosstune.data.prepared_dir import read_split
    from crosstune.selection.candidates import candidate_features, sample_indices
    from crosstune.selection.candidates import score_candidates as score_all

    params, path = prepare(task, work)
    modality = tasks.MODALITIES[task]
    frame = read_split(str(work / "prepared"), "train")
    seed = params["base"]["seed"]
    rows = sample_indices(len(frame), params["backbone"]["selection_samples"], seed)
    labels = np.asarray(frame["label"].iloc[rows])
    sample = (decode_images(frame["image"].iloc[rows].tolist(), 256) if modality == "image"
              else frame[modality].iloc[rows].tolist())
    texts = frame["text"].tolist() if modality == "text" else []
    store = work / "feature-store"
    scores: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    for candidate in CANDIDATES[task]:
        own = work / f"params-{candidate}.yaml"
        own.write_text(yaml.safe_dump(candidate_params(params, candidate, modality)))
        backbone = load_section(BackboneParams, str(own))
        _, extraction = candidate_features(backbone, [candidate], modality, sample, texts, seed, store)
        scores[candidate], seconds[candidate] = {}, {"extract": round(extraction[candidate], 3)}
        for score in FEATURE_SCORES + (SOURCE_SCORES if modality == "image" else []):
            started = time.perf_counter()
            try:
                result = score_all(dataclasses.replace(backbone, score=score), [candidate], modality, sample, labels,
                                   texts, seed, store)
            except Exception as error:  # a random candidate has no source classifier: LEEP/NCE refuse it
                print(f"{task} {candidate} {score}: {error}", flush=True)
                continue
            scores[candidate][score] = result.scores[candidate]
            seconds[candidate][score] = round(time.perf_counter() - started, 3)
        print(task, candidate, json.dumps(scores[candidate]), json.dumps(seconds[candidate]), flush=True)
    return {"scores": scores, "score_seconds": seconds, "samples": int(len(labels))}


def finetune_run(task: str, work: Path, params: dict, candidate: str, seed: int, head_init: str = "auto") -> dict:
    """Phase 2: one candidate, one seed, the fixed budget; test metrics and the seconds of fine-tuning. With
    ``head_init: probe`` the probe stage fits the head on the frozen features first and fine-tuning starts from it
    (LP-FT); its seconds count in the fine-tuning's."""
    from crosstune.pipeline.attach_head import attach_head_stage
    from crosstune.pipeline.backbone import backbone_stage
    from crosstune.pipeline.cache import cache_stage
    from crosstune.pipeline.evaluate import evaluate_stage
    from crosstune.pipeline.finetune import finetune_stage
    from crosstune.pipeline.probe import probe_stage

    modality = tasks.MODALITIES[task]
    encoded = work / "candidates" / candidate
    own = encoded / "params.yaml"
    if not (encoded / "backbone" / "config.json").is_file():  # the candidate's backbone and encoding, once per task
        encoded.mkdir(parents=True, exist_ok=True)
        own.write_text(yaml.safe_dump(candidate_params(params, candidate, modality)))
        backbone_stage(str(work / "prepared"), str(encoded / "backbone"), str(encoded / "encoded"),
                       str(encoded / "backbone.json"), str(encoded / "selection.json"), str(encoded / "selection.csv"),
                       str(own))
    blocks = json.loads((encoded / "backbone.json").read_text())["num_blocks"]
    run = encoded / (f"seed-{seed}" if head_init == "auto" else f"seed-{seed}-{head_init}")
    run.mkdir(parents=True, exist_ok=True)
    run_params = merge(candidate_params(params, candidate, modality, blocks),
                       {"base": {"seed": seed}, "finetune": {"head_init": head_init}})
    path = run / "params.yaml"
    path.write_text(yaml.safe_dump(run_params))
    started = time.perf_counter()
    attach_head_stage(str(encoded / "backbone"), str(work / "prepared"), str(run / "initial"),
                      str(run / "freeze.json"), str(path))
    cache_stage(str(run / "initial"), str(encoded / "encoded"), str(run / "features"), str(path))
    probe = None
    if head_init == "probe":
        probe = str(run / "probe")
        probe_stage(str(run / "initial"), str(encoded / "encoded"), probe, str(run / "probe.json"), str(path),
                    str(run / "features"))
    fine = finetune_stage(str(run / "initial"), str(encoded / "encoded"), str(run / "model"), str(run / "live"),
                          str(path), str(run / "features"), probe_dir=probe)
    seconds = time.perf_counter() - started
    metrics = evaluate_stage(str(run / "model"), str(encoded / "encoded"), str(work / "prepared"),
                             str(run / "eval.json"), str(run / "predictions.csv"), str(run / "misclassified.png"),
                             str(path))
    return {"candidate": candidate, "seed": seed, "f1_macro": metrics["f1_macro"], "accuracy": metrics["accuracy"],
            "validation_f1_macro": fine.get("f1_macro"), "freeze_depth": run_params["freeze"]["depth"],
            "num_blocks": blocks, "head_init": head_init, "seconds": round(seconds, 1)}


def main() -> None:
    from crosstune.logging_setup import configure_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("score", "finetune"))
    parser.add_argument("--tasks", default=",".join(CANDIDATES))
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--candidates", help="only these (comma-separated), e.g. to add one to a finished run")
    parser.add_argument("--head-init", default="auto", choices=("auto", "probe"),
                        help="finetune.head_init of every run: auto (the budget) or probe (LP-FT; use another --out)")
    parser.add_argument("--out", default=str(REPO / "bench/selection/results.json"))
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "crosstune-bench-selection"),
                        help="scratch folder (kept between the phases: the prepared splits are reused)")
    args = parser.parse_args()
    configure_logging("WARNING")
    out, root = Path(args.out), Path(args.work)
    results = json.loads(out.read_text()) if out.exists() else {}
    only = set(args.candidates.split(",")) if args.candidates else None
    for task in args.tasks.split(","):
        work = root / task
        work.mkdir(parents=True, exist_ok=True)
        entry = results.setdefault(task, {"runs": []})
        entry["params"] = tasks.TASKS[task] or "params.yaml"
        if args.phase == "score":
            scored = score_task(task, work)
            for key in ("scores", "score_seconds"):
                entry.setdefault(key, {}).update({candidate: value for candidate, value in scored[key].items()
                                                  if only is None or candidate in only})
            entry["samples"] = scored["samples"]
            out.write_text(json.dumps(results, indent=1) + "\n")
            continue
        params, _ = prepare(task, work)
        done = {(run["candidate"], run["seed"]) for run in entry["runs"]}
        for seed in (int(value) for value in args.seeds.split(",")):
            for candidate in CANDIDATES[task]:
                if (candidate, seed) in done or (only is not None and candidate not in only):
                    continue
                run = finetune_run(task, work, params, candidate, seed, args.head_init)
                record_run(results, out, task, entry["runs"], run)


if __name__ == "__main__":
    main()
