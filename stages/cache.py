"""Stage 4, cache: run the frozen bottom of the model (embeddings/stem + frozen blocks) once per split.

Reads params sections `base`, `cache`, `augment` and `finetune` (max_length and what decides whether
caching is valid). Writes data/features/meta.json, and the cached splits when caching applies.
By hand:
    python stages/cache.py --initial models/initial --encoded data/encoded --out data/features
"""

import argparse
import sys

from crosstune.entry_point import run_main
from crosstune.pipeline.cache import cache_stage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", required=True, help="model directory from the attach-head stage")
    parser.add_argument("--encoded", required=True, help="encoded splits from the backbone stage")
    parser.add_argument("--out", required=True, help="directory for the cached prefix outputs")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    cache_stage(args.initial, args.encoded, args.out, args.params)


if __name__ == "__main__":
    sys.exit(run_main(main))
