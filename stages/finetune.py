"""Stage 4, finetune: train the attached model; keep the best epoch by the validation metric.

Reads params sections `base` (seed, device) and `finetune`. By hand:
    python stages/finetune.py --initial models/initial --encoded data/encoded \
        --model models/finetuned --live metrics/finetune
"""

import argparse
import sys

from crosstune.cli import run_main
from crosstune.pipeline import finetune_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", required=True, help="model directory from the attach-head stage")
    parser.add_argument("--encoded", required=True, help="tokenized splits from the backbone stage")
    parser.add_argument("--model", required=True, help="directory for the fine-tuned model")
    parser.add_argument("--live", required=True, help="dvclive directory for step metrics and plots")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    finetune_stage(args.initial, args.encoded, args.model, args.live, args.params)


if __name__ == "__main__":
    sys.exit(run_main(main))
