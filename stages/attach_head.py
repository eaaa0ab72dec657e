"""Stage 3, attach-head (freeze-and-attach-head): freeze backbone layers and attach a new task head.

Reads params sections `base` (seed), `freeze` and `head`. By hand:
    python stages/attach_head.py --backbone models/backbone --prepared data/prepared \
        --model models/initial --report metrics/freeze.json --blocks metrics/freeze_blocks.csv
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.attach_head import attach_head_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, help="backbone directory from the backbone stage")
    parser.add_argument("--prepared", required=True, help="prepared data directory (for the label map)")
    parser.add_argument("--model", required=True, help="directory for the model with its new head")
    parser.add_argument("--report", required=True, help="JSON of trainable vs frozen parameter counts, the depth "
                                                        "freeze.depth: auto recommends and the per-block scores")
    parser.add_argument("--blocks", help="CSV of the per-block transferability scores and which blocks are frozen")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    attach_head_stage(args.backbone, args.prepared, args.model, args.report, args.params, args.blocks)


if __name__ == "__main__":
    sys.exit(run_main(main))
