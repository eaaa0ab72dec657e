"""Stage 1, prepare (prepare-target-data): validate, clean and split the target data.

Reads params sections `base` (seed) and `prepare`. Run by `dvc repro`; by hand:
    python stages/prepare.py --train data/raw/train.csv --test data/raw/test.csv --source data/source \
        --out data/prepared
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.prepare import prepare_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="target training file (CSV, TSV or Parquet)")
    parser.add_argument("--test", help="target test file; omitted: a stratified test split is held out")
    parser.add_argument("--source", help="labelled source-domain table or image folder (or a folder holding "
                                         "source.csv or images/); a folder with neither means no source domain")
    parser.add_argument("--out", required=True, help="directory for the prepared splits")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    prepare_stage(args.train, args.test, args.out, args.params, args.source)


if __name__ == "__main__":
    sys.exit(run_main(main))
