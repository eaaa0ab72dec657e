"""Blood cells in BCCD: crosstune's detector fine-tuning against torchvision's reference detection recipe, per seed.

Every contestant trains the same model, FCOS (torchvision) on EfficientNet-Lite0 (ImageNet) with a 64-channel
pyramid, on the same prepared split of ``examples/detection.yaml`` (204 train / 88 validation images; the seed
fixes the validation carve) for the example's epochs, and is tested on BCCD's 72 upstream test images. COCO mAP
(torchmetrics on pycocotools) on test, the best validation epoch kept:

- ``crosstune``: the finetune stage's loop as the example runs it: images letterboxed to 320x448 once,
  ``freeze.depth: 6`` with those blocks' outputs cached once, AdamW 1e-3 with linear warmup and decay, batch 8;
- ``crosstune_depth0``: the same with nothing frozen (every epoch runs the whole backbone);
- ``reference``: torchvision's reference recipe (``references/detection/train.py``: SGD with momentum 0.9,
  weight decay 1e-4, a linear warmup over the first epoch from lr/1000, the rate divided by 10 at 16/26 and
  22/26 of the epochs, random horizontal flips, the model's own ``GeneralizedRCNNTransform`` resizing each JPEG
  to the canvas's short side every batch, a ``DataLoader`` decoding the JPEGs every epoch), at the rate of the
  reference's FCOS command (``--lr 0.01`` for 8 GPUs x 2 images) scaled linearly to batch 8: 0.005; the same
  blocks frozen (FrozenBN as the reference's backbones). ``reference_lr1e-2`` at 0.01, ``reference_lr1e-3`` at
  crosstune's rate;
- ``reference_init1``: the reference at 0.005 with the box regression's bias started at 1 instead of
  torchvision's 0. FCOS regresses relu(conv) box sides, so at torchvision's initialisation most left and right
  sides are exactly 0; GIoU's gradient vanishes on such zero-width boxes, and SGD's steps, proportional to it,
  never leave them within these epochs (confident zero-area boxes, mAP 0), where AdamW's normalised steps do.
  A bias of 1 starts each box one stride wide (the FCOS paper's exp(0) = 1);
- ``probe`` and ``scratch``: the guard's other two detectors, through the pipeline's own stage functions on
  the same workdir: the pyramid and towers trained on the frozen backbone (``probe.epochs`` at ``probe.lr``),
  and the same detector from random weights with the ``finetune`` params (the fine-tuned one needs at least 20
  points of mAP@.5 over it, mean of 3 seeds);
- ``reference_adamw``: the reference's data path (JPEGs decoded, resized and the frozen blocks run every batch)
  with crosstune's optimizer and schedule (``build_optimizer``/``build_scheduler`` on the example's finetune
  params): the same training at equal quality, so the per-epoch ratio against ``crosstune`` is the data path's.

Seconds per epoch count the training passes only (validation excluded); crosstune's one-time cache pass is
reported apart. Each run is its own subprocess. Writes bench/detection/results.json; the README has the table.

    .venv/bin/python bench/detection/run.py [--seeds 42,43,44] [--tools crosstune,reference,...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from workdir import (  # noqa: E402  (also puts src/ on the path)
    contestant_arguments,
    default_params,
    done_runs,
    load_results,
    measure_contestant,
    merge,
    prepare_workdir,
    record_run,
    run_contestant,
)

TOOLS = ("crosstune", "crosstune_depth0", "probe", "scratch", "reference", "reference_lr1e-2", "reference_lr1e-3",
         "reference_init1", "reference_adamw")
DEPTHS = {"crosstune_depth0": 0}
REFERENCE = {  # tool -> SGD's rate (None: crosstune's optimizer and schedule) and the box regression's bias
    "reference": (0.005, None), "reference_lr1e-2": (0.01, None), "reference_lr1e-3": (1e-3, None),
    "reference_init1": (0.005, 1.0), "reference_adamw": (None, None)}


def _test_scores(model, workdir: Path, batch_size: int) -> dict:
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.detection.inference import detect_split
    from crosstune.tasks.registry import TASKS

    split = load_any_split(workdir / "encoded/test.safetensors")
    found, truth, _ = detect_split(model, split, batching_for({"task": "detection"}, batch_size * 2, 0), "cpu")
    return TASKS.get("detection").score_detections(found, truth, model.spec["labels"], per_class=True)


def run_crosstune(workdir: Path, params_path: Path, seed: int) -> dict:
    """The finetune stage's loop on the attached detector, from the frozen-prefix cache where the freeze allows."""
    from crosstune.config import AugmentParams, CacheParams, FinetuneParams, load_section
    from crosstune.data.batching import batching_for, load_any_split
    from crosstune.freezing.policy import apply_policy
    from crosstune.prefix_cache.plan import plan_cache
    from crosstune.prefix_cache.store import CachedBatching, build_cached_split
    from crosstune.training.loop import TrainingData, train
    from crosstune.training.run_context import RunContext
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    params = load_section(FinetuneParams, params_path)
    augment = load_section(AugmentParams, params_path)
    model, config = load_transfer_model(workdir / "initial")
    apply_policy(model, saved_freeze(config), seed)
    splits = {name: load_any_split(workdir / f"encoded/{name}.safetensors") for name in ("train", "validation")}
    batching, level = batching_for(config, params.batch_size, 0, augment), None
    train_split, validation_split = splits["train"], splits["validation"]
    plan = plan_cache(config, load_section(CacheParams, params_path), augment, params)
    started = time.perf_counter()
    if plan.cached:
        plain = batching_for(config, 16, 0)
        train_split, validation_split = (build_cached_split(model, plan.level, split, plain, 16, "float32", "cpu")
                                         for split in (train_split, validation_split))
        batching, level = CachedBatching(params.batch_size, "image"), plan.level
    cache_seconds = time.perf_counter() - started
    result = train(model, TrainingData(train_split, validation_split, batching, level), params, seed,
                   RunContext.single_process("cpu", params.mixed_precision))
    return {"epoch_seconds": result.epoch_seconds, "validation": [{key: h[key] for key in ("map", "map_50")}
                                                                   for h in result.history],
            "best_epoch": result.best_epoch, "cache_seconds": cache_seconds, "cached_level": plan.level,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "test": _test_scores(model, workdir, params.batch_size)}


def run_guard_model(tool: str, workdir: Path, params_path: Path) -> dict:
    """The probe or scratch stage as ``dvc repro`` runs it (probe without the cache stage's features: its frozen
    backbone's outputs computed once in memory), then the saved detector tested as the others are."""
    from crosstune.config import FinetuneParams, load_section
    from crosstune.pipeline.probe import probe_stage
    from crosstune.pipeline.scratch import scratch_stage
    from crosstune.transfer_model.storage import load_transfer_model

    initial, encoded, model_dir = str(workdir / "initial"), str(workdir / "encoded"), workdir / tool
    if tool == "probe":
        summary = probe_stage(initial, encoded, str(model_dir), str(workdir / "probe.json"), str(params_path), None)
    else:
        summary = scratch_stage(initial, encoded, str(model_dir), str(params_path))
    model, _ = load_transfer_model(model_dir)
    history = json.loads((model_dir / "train_history.json").read_text())
    return {"validation": [{key: h[key] for key in ("map", "map_50")} for h in history], "summary": summary,
            "test": _test_scores(model, workdir, load_section(FinetuneParams, params_path).batch_size)}


class _VocImages:
    """The prepared split's JPEGs and boxes as torchvision's reference datasets give them: (image tensor in
    [0, 1], target dict), decoded on every access, flipped at random in training (the reference's ``hflip``)."""

    def __init__(self, frame, labels: list[str], train: bool) -> None:
        from crosstune.detection.annotations import parse_boxes_json

        self.paths = list(frame["image"])
        self.boxes = [parse_boxes_json(cell) for cell in frame["label"]]
        self.index = {name: position + 1 for position, name in enumerate(labels)}
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        import torch
        from torchvision import tv_tensors
        from torchvision.io import decode_image
        from torchvision.transforms import v2

        image = decode_image(self.paths[row]).float().div(255.0)
        boxes = torch.tensor([box.corners() for box in self.boxes[row]], dtype=torch.float32).reshape(-1, 4)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": torch.tensor([self.index[box.label] for box in self.boxes[row]], dtype=torch.int64)}
        if self.train:
            image, target = v2.RandomHorizontalFlip(0.5)(image, target)
        return image, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}


def _collate(batch):
    return tuple(zip(*batch))


def run_reference(workdir: Path, params_path: Path, seed: int, lr: float | None, box_bias: float | None) -> dict:
    """torchvision's reference training loop (``train_one_epoch`` of references/detection/engine.py) on the same
    FCOS: images resized by the model's transform each batch, flips, SGD at ``lr`` with warmup and step decay
    (``lr`` None: crosstune's optimizer and schedule instead); ``box_bias``: the box regression's initial bias."""
    import torch

    from crosstune.config import FinetuneParams, load_section
    from crosstune.data.prepared_dir import read_split
    from crosstune.detection.scoring import detection_scores
    from crosstune.freezing.policy import apply_policy, set_train_mode
    from crosstune.training.optimization import build_optimizer, build_scheduler
    from crosstune.transfer_model.settings import saved_freeze
    from crosstune.transfer_model.storage import load_transfer_model

    params = load_section(FinetuneParams, params_path)
    model, config = load_transfer_model(workdir / "initial")
    apply_policy(model, saved_freeze(config), seed)
    detector, labels = model.detector, list(config["labels"])
    if box_bias is not None:
        torch.nn.init.constant_(detector.head.regression_head.bbox_reg.bias, box_bias)
    torch.manual_seed(seed)
    loaders = {name: torch.utils.data.DataLoader(
        _VocImages(read_split(str(workdir / "prepared"), name), labels, name == "train"),
        batch_size=params.batch_size if name == "train" else params.batch_size * 2, shuffle=name == "train",
        num_workers=0, collate_fn=_collate, generator=torch.Generator().manual_seed(seed))
        for name in ("train", "validation", "test")}
    trainable = [p for p in detector.parameters() if p.requires_grad]
    if lr is None:  # per step, as crosstune's loop steps them
        optimizer = build_optimizer(model, params)
        step_schedule = build_scheduler(optimizer, params, params.epochs * len(loaders["train"]))
        decay = None
    else:
        optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=1e-4)
        milestones = [max(1, round(params.epochs * 16 / 26)), max(1, round(params.epochs * 22 / 26))]
        decay, step_schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1), None

    def evaluate(name: str) -> dict:
        detector.eval()
        found, truth = [], []
        with torch.inference_mode():
            for images, targets in loaders[name]:
                found.extend(detector(list(images)))
                truth.extend(targets)
        return detection_scores(found, truth, labels)

    history, epoch_seconds, best, best_state = [], [], None, None
    for epoch in range(params.epochs):
        set_train_mode(model)  # frozen blocks stay in eval mode, as crosstune's loop keeps them
        warmup = step_schedule
        if epoch == 0 and decay is not None:  # the reference's warmup: linear from lr/1000 over the first epoch
            warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3,
                                                       total_iters=min(1000, len(loaders["train"]) - 1))
        started = time.perf_counter()
        for images, targets in loaders["train"]:
            losses = detector(list(images), list(targets))
            loss = sum(losses.values())
            if not math.isfinite(float(loss)):
                raise RuntimeError(f"reference recipe: loss is {float(loss)} at epoch {epoch + 1}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if warmup is not None:
                warmup.step()
        if decay is not None:
            decay.step()
        epoch_seconds.append(time.perf_counter() - started)
        scores = evaluate("validation")
        history.append({key: scores[key] for key in ("map", "map_50")})
        if best is None or scores["map"] > best:
            best, best_state = scores["map"], {key: value.clone() for key, value in detector.state_dict().items()}
    detector.load_state_dict(best_state)
    return {"epoch_seconds": epoch_seconds, "validation": history, "lr": lr if lr is not None else params.lr,
            "optimizer": "sgd" if lr is not None else params.optimizer, "box_bias": box_bias,
            "best_epoch": 1 + max(range(len(history)), key=lambda index: history[index]["map"]),
            "trainable_parameters": sum(p.numel() for p in trainable),
            "test": {**evaluate("test"), "per_class": None}}


def worker(tool: str, workdir: Path, params_path: Path, seed: int, out: Path) -> None:
    if tool in REFERENCE:
        measure_contestant(lambda: run_reference(workdir, params_path, seed, *REFERENCE[tool]), out)
    elif tool in ("probe", "scratch"):
        measure_contestant(lambda: run_guard_model(tool, workdir, params_path), out)
    else:
        measure_contestant(lambda: run_crosstune(workdir, params_path, seed), out)


def _workdir(tool: str, seed: int) -> tuple[Path, Path]:
    """Prepare, encode and attach for one seed (the seed fixes the validation carve) and freeze depth."""
    params = default_params("examples/detection.yaml")
    params = merge(params, {"base": {"seed": seed}})
    if tool in DEPTHS:
        params = merge(params, {"freeze": {"depth": DEPTHS[tool]}})
    work = Path(tempfile.mkdtemp(prefix=f"crosstune-detection-{tool}-{seed}-"))
    return work, prepare_workdir(work, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    contestant_arguments(parser, TOOLS, str(REPO / "bench/detection/results.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.workdir), Path(args.params), args.seed, Path(args.result))
        return
    from crosstune.logging_setup import configure_logging

    configure_logging("WARNING")
    out = Path(args.out)
    results = load_results(out)
    done = done_runs(results, ("seed", "tool"))
    for seed in (int(value) for value in args.seeds.split(",")):
        for tool in args.tools.split(","):
            if (seed, tool) in done:
                continue
            workdir, params_path = _workdir(tool, seed)
            print(f"seed={seed}: {tool} ...", flush=True)
            run = {"seed": seed, "tool": tool, **run_contestant(__file__, tool, workdir, params_path, seed)}
            record_run(results, out, "detection", results["runs"], run)


if __name__ == "__main__":
    main()
