"""Stage 6, finetune: train the attached model; keep the best epoch by the validation metric.

Reads params sections `base` (seed, device), `finetune` and `augment`. Checkpoints every epoch to
--checkpoints (a DVC persist output), so `dvc repro` after a crash resumes from the last complete epoch.
With finetune.num_processes > 1 it starts itself again under torchrun (DDP). By hand:
    python stages/finetune.py --initial models/initial --probe models/probe --encoded data/encoded \\
        --model models/finetuned --live metrics/finetune --features data/features \\
        --checkpoints checkpoints/finetune
Several GPUs, directly: torchrun --nproc_per_node 4 stages/finetune.py <the same arguments>
"""

import argparse
import sys

from crosstune.entry_point import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", required=True, help="model directory from the attach-head stage")
    parser.add_argument("--probe", default=None, help="the probe stage's model: the start with finetune.head_init: probe")
    parser.add_argument("--encoded", required=True, help="tokenized splits from the backbone stage")
    parser.add_argument("--model", required=True, help="directory for the fine-tuned model")
    parser.add_argument("--live", required=True, help="dvclive directory for step metrics and plots")
    parser.add_argument("--features", default=None, help="frozen-prefix cache from the cache stage (optional)")
    parser.add_argument("--checkpoints", default=None, help="directory for resumable per-epoch checkpoints")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    from crosstune.pipeline.finetune import launch_finetune

    launch_finetune(__file__, sys.argv[1:] if argv is None else list(argv), args.initial, args.encoded, args.model,
                    args.live, args.params, args.features, args.checkpoints, args.probe)


if __name__ == "__main__":
    sys.exit(run_main(main))
