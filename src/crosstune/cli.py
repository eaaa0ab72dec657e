"""Command line: ``crosstune predict`` (or ``python -m crosstune predict``) and the stage runner.

User errors (bad params, bad data, missing backbone) print one clear line and exit with status 2;
set ``CROSSTUNE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from crosstune.errors import CrosstuneError
from crosstune.logging_setup import configure_logging

logger = logging.getLogger(__name__)
USER_ERRORS = (CrosstuneError, ValueError, KeyError, FileNotFoundError)


def run_main(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` with logging configured, turning user errors into a one-line message and exit 2."""
    configure_logging()
    try:
        main(argv)
    except USER_ERRORS as error:
        if os.environ.get("CROSSTUNE_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"crosstune: error: {message}", file=sys.stderr)
        return 2
    return 0


def _predict(args: argparse.Namespace) -> None:
    from crosstune.predict import Predictor

    predictor = Predictor.from_directory(args.model)
    count = predictor.predict_file(args.input, args.output, args.text_column)
    logger.info("labelled %d rows of %s into %s", count, args.input, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosstune", description="Cross-domain fine-tuning as a DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="label a CSV/TSV/Parquet file of texts with a fine-tuned model")
    predict.add_argument("--model", default="models/finetuned", help="model directory (default: models/finetuned)")
    predict.add_argument("--input", required=True, help="file of new texts")
    predict.add_argument("--output", required=True, help="CSV to write: the input columns plus predictions")
    predict.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    predict.set_defaults(handler=_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


def entry_point() -> None:
    """Console-script entry: ``crosstune ...``."""
    sys.exit(run_main(main))
