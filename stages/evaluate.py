"""Stage 8, evaluate: test-split metrics (the task's), predictions, the task's picture of test examples,
baselines, the negative-transfer guard (the fine-tuned model against the scratch and the probe models; with
fallback the best of the three on validation is exported) and the domain gap before and after.

Reads params sections `base` (seed, device) and `evaluate`. By hand:
    python stages/evaluate.py --model models/finetuned --encoded data/encoded --prepared data/prepared \
        --initial models/initial --scratch models/scratch --probe models/probe \
        --metrics metrics/eval.json --predictions metrics/predictions.csv --examples metrics/misclassified.png \
        --summary metrics/summary.json
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.evaluate import evaluate_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="fine-tuned model directory")
    parser.add_argument("--encoded", required=True, help="tokenized splits from the backbone stage")
    parser.add_argument("--prepared", required=True, help="prepared splits (texts for the baselines)")
    parser.add_argument("--initial", help="attached model before fine-tuning (guard and domain gap)")
    parser.add_argument("--scratch", help="directory for the guard's scratch model")
    parser.add_argument("--probe", help="the probe stage's model (the guard's linear probe)")
    parser.add_argument("--metrics", required=True, help="flat JSON of test metrics")
    parser.add_argument("--summary", help="flat JSON of the headline test metrics (what `dvc metrics show` lists)")
    parser.add_argument("--predictions", required=True, help="CSV of test inputs, labels and predictions")
    parser.add_argument("--examples", required=True, help="PNG of misclassified test examples")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    evaluate_stage(args.model, args.encoded, args.prepared, args.metrics, args.predictions, args.examples,
                   args.params, args.initial, args.scratch, args.probe, args.summary)


if __name__ == "__main__":
    sys.exit(run_main(main))
