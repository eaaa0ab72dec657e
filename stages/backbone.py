"""Stage 2, backbone (select-and-load-backbone): pick the backbone (by name or transferability score),
load it and encode the splits for it.

Reads params sections `base` (seed), `backbone` and `text_augment`. By hand:
    python stages/backbone.py --prepared data/prepared --model models/backbone \
        --encoded data/encoded --summary metrics/backbone.json \
        --selection metrics/selection.json --selection-table metrics/selection.csv
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.backbone import backbone_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepared", required=True, help="directory written by the prepare stage")
    parser.add_argument("--model", required=True, help="directory to save the backbone into")
    parser.add_argument("--encoded", required=True, help="directory for the tokenized splits")
    parser.add_argument("--summary", required=True, help="JSON summary of the backbone")
    parser.add_argument("--selection", required=True, help="JSON of each candidate's transferability score")
    parser.add_argument("--selection-table", required=True, help="CSV of the same, for the bar plot")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    backbone_stage(args.prepared, args.model, args.encoded, args.summary, args.selection, args.selection_table,
                   args.params)


if __name__ == "__main__":
    sys.exit(run_main(main))
