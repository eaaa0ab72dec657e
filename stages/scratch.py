"""Stage 7, scratch: the negative-transfer guard's model, the same architecture trained from random
initialisation with the same data, finetune params and budget (only when evaluate.guard is not off, and with
evaluate.scratch: auto only when the fine-tuned model validates below a learned baseline).

Reads params sections `base`, `finetune`, `augment` and `evaluate`. By hand:
    python stages/scratch.py --initial models/initial --encoded data/encoded --model models/scratch \
        --finetuned models/finetuned --prepared data/prepared
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.scratch import scratch_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", required=True, help="model directory from the attach-head stage")
    parser.add_argument("--encoded", required=True, help="encoded splits from the backbone stage")
    parser.add_argument("--model", required=True, help="directory for the scratch model")
    parser.add_argument("--finetuned", help="the fine-tuned model (evaluate.scratch: auto weighs it against the "
                        "baselines); without it the scratch model is trained")
    parser.add_argument("--prepared", help="prepared splits from the prepare stage (the baselines' texts)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    scratch_stage(args.initial, args.encoded, args.model, args.params, args.finetuned, args.prepared)


if __name__ == "__main__":
    sys.exit(run_main(main))
