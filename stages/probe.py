"""Stage 5, probe: the linear probe as a model, the frozen pretrained backbone with its head's output layer
fitted in closed form on the frozen features (the start of LP-FT with finetune.head_init: probe, and the
guard's third model beside the fine-tuned and the scratch one).

Reads params sections `base` (seed, device), `cache.batch_size` and `finetune` keys `class_weights`,
`select_metric`, `loss`, `label_smoothing`, `max_length`. By hand:
    python stages/probe.py --initial models/initial --encoded data/encoded --features data/features \\
        --model models/probe --metrics metrics/probe.json
"""

import argparse
import sys

from crosstune.entry_point import run_main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", required=True, help="model directory from the attach-head stage")
    parser.add_argument("--encoded", required=True, help="encoded splits from the backbone stage")
    parser.add_argument("--features", required=True, help="frozen-prefix cache from the cache stage")
    parser.add_argument("--model", required=True, help="directory for the probe model")
    parser.add_argument("--metrics", required=True, help="JSON file for the fit's summary")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    from crosstune.pipeline.probe import probe_stage

    probe_stage(args.initial, args.encoded, args.model, args.metrics, args.params, args.features)


if __name__ == "__main__":
    sys.exit(run_main(main))
