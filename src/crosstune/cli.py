"""Command line: ``crosstune predict`` (or ``python -m crosstune predict``), ``report``, ``export``, ``example``,
``zoo``, ``check``, ``sweep`` and ``tune``.

User errors (bad params, bad data, missing backbone) print one clear line and exit with status 2
(:func:`crosstune.entry_point.run_main`); set ``CROSSTUNE_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from typing import Sequence

from crosstune.entry_point import run_main
from crosstune.errors import CrosstuneError
from crosstune.pipeline import metrics_files

logger = logging.getLogger(__name__)


def _predict(args: argparse.Namespace) -> None:
    from pathlib import Path

    from crosstune.inference.predictor import Predictor

    model, table = Path(args.model), Path(args.input)
    if not model.is_dir():  # the flag that carried the bad path, before anything is loaded
        raise CrosstuneError(f"--model {args.model}: {'is a file, not' if model.exists() else 'no such'} directory; "
                             f"pass a model directory such as models/finetuned (made by `dvc repro`) or one "
                             f"`crosstune export` wrote.")
    if not table.exists():
        raise CrosstuneError(f"--input {args.input}: no such file or folder; pass the table to label (CSV, TSV, JSON "
                             f"Lines, Excel or Parquet), or a folder of images or recordings.")
    predictor = Predictor.from_directory(args.model, runtime="onnx" if args.onnx else "torch")
    count = predictor.predict_file(args.input, args.output, args.text_column, draw=args.draw)
    logger.info("labelled %d rows of %s into %s", count, args.input, args.output)


def _report(args: argparse.Namespace) -> None:
    from crosstune.reporting.report import build_report

    path = build_report(args.out, args.compare, args.repo)
    print(f"report written to {path.resolve()} (open it in a browser; it needs no network)")


def _export(args: argparse.Namespace) -> None:
    from crosstune.inference.export import export_model

    if args.model is None:
        from crosstune.inference.export import exported_model_dir

        args.model = exported_model_dir(args.metrics)
    path = export_model(args.model, args.out, args.metrics, args.backbone_summary, args.data_summary, args.repo,
                        format=args.format)
    print(f"exported {args.model} with its model card to {path}; load it with crosstune.load({str(path)!r})")
    if args.format == "onnx":
        print(f"run {path / 'model.onnx'} with ONNX Runtime: crosstune predict --onnx --model {path} --input ...")


def _zoo(args: argparse.Namespace) -> None:
    from crosstune.backbones.zoo import catalogue, compact_catalogue, install, opt_in_names

    if args.action == "list":
        print(catalogue() if args.markdown else compact_catalogue(shutil.get_terminal_size((100, 24)).columns))
        return
    if not args.names:
        raise CrosstuneError(f"crosstune zoo install: name the entries to install, e.g. `crosstune zoo install "
                             f"mpnet-base`; opt-in entries: {opt_in_names()}")
    for name in args.names:
        print(f"{name}: installed in {install(name)}")


def _compare_committed(args: argparse.Namespace) -> None:
    from crosstune.reporting.rerun import rerun_summary

    print(rerun_summary(args.repo, args.revision))


def _check(args: argparse.Namespace) -> None:
    from crosstune.checks import run_check

    run_check(args.params, args.overrides)


def _sweep(args: argparse.Namespace) -> None:
    from crosstune.experiments.sweep import format_ranking, sweep

    results, metric = sweep(args.grid, args.jobs, args.repo, args.metric, args.timeout)
    print(format_ranking(results, metric))
    failed = [result.name for result in results if result.validation is None]
    if failed:
        raise CrosstuneError(f"{len(failed)} of {len(results)} trial(s) failed ({', '.join(failed)}); run the same "
                             f"`crosstune sweep` again to re-queue only those.")
    print(f"best: {results[0].name}; bring it into the workspace with `dvc exp apply {results[0].name}`")


def _tune(args: argparse.Namespace) -> None:
    from crosstune.experiments.tune import DEFAULT_STORAGE, study_table, tune

    study = tune(args.space, args.trials, args.study, args.storage or DEFAULT_STORAGE, args.repo, args.metric,
                 args.seed, args.fixed)
    table = study_table(study, args.repo)
    print(table)
    if args.table:
        from crosstune.io import atomic_path

        with atomic_path(args.table) as temporary:
            temporary.write_text(table + "\n", encoding="utf-8")
    completed = [trial for trial in study.trials if trial.value is not None]
    if completed:
        best = study.best_trial
        print(f"best: trial {best.number} ({best.user_attrs.get('experiment')}); bring it into the workspace with "
              f"`dvc exp apply {best.user_attrs.get('experiment')}`")


def _example(args: argparse.Namespace) -> None:
    from crosstune.experiments.example import run_example

    run_example(args.preset, args.dvc_args, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crosstune", description="Cross-domain fine-tuning as a DVC pipeline.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="label a CSV/TSV/Parquet file of texts with a fine-tuned model")
    predict.add_argument("--model", default="models/finetuned", help="model directory (default: models/finetuned)")
    predict.add_argument("--input", required=True, help="table of new texts (or image or recording paths), or a "
                                                        "folder of images or recordings")
    predict.add_argument("--output", required=True, help="file to write: the input columns plus predictions, as CSV, "
                                                         "or by its suffix as .json (one list) or .jsonl (a line each)")
    predict.add_argument("--draw", metavar="DIR", help="detection: also write each image with its predicted boxes "
                                                       "drawn into DIR")
    predict.add_argument("--text-column", help="column holding the texts, or the image or recording paths "
                                               "(default: the column the model was trained from)")
    predict.add_argument("--onnx", action="store_true", help="run the model directory's model.onnx with ONNX Runtime "
                                                             "(made by `crosstune export --format onnx`)")
    predict.set_defaults(handler=_predict)
    report = commands.add_parser("report", help="write one self-contained HTML page of metrics, params and plots")
    report.add_argument("--compare", metavar="REV", help="git revision, branch or experiment to compare against")
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    report.add_argument("--repo", default=".", help="the DVC repository (default: current directory)")
    report.set_defaults(handler=_report)
    export = commands.add_parser("export", help="copy the exported model with a model card (README.md) to hand over")
    export.add_argument("--model", help="model directory (default: the one evaluate exported: models/finetuned, or "
                                        "models/probe or models/scratch when evaluate.guard: fallback chose it)")
    export.add_argument("--out", required=True, help="directory to create")
    export.add_argument("--metrics", default=metrics_files.TEST, help="test metrics to put on the card")
    export.add_argument("--backbone-summary", default=metrics_files.BACKBONE)
    export.add_argument("--data-summary", default="data/prepared/summary.json")
    export.add_argument("--repo", default=".", help="the git/DVC repository (default: current directory)")
    export.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                        help="safetensors: the model directory as is (default); onnx: also model.onnx for ONNX Runtime")
    export.set_defaults(handler=_export)
    example = commands.add_parser("example", help="run a params preset (e.g. examples/fashion.yaml) as a DVC "
                                                "experiment and print its test metrics")
    example.add_argument("--keep", action="store_true", help="leave the experiment applied to the workspace (by "
                                                             "default it is saved and the workspace returns to the "
                                                             "commit)")
    example.add_argument("preset", help="YAML file of params.yaml keys to override")
    example.add_argument("dvc_args", nargs=argparse.REMAINDER, help="extra arguments for `dvc exp run`")
    example.set_defaults(handler=_example)
    zoo = commands.add_parser("zoo", help="list the pretrained backbones (licence, source, installed here or not); "
                                          "`crosstune zoo install NAME` installs an opt-in one (make zoo)")
    zoo.add_argument("action", nargs="?", choices=("list", "install"), default="list")
    zoo.add_argument("names", nargs="*", help="with install: the opt-in entries to install (e.g. mpnet-base)")
    zoo.add_argument("--markdown", action="store_true", help="list every field (pretraining, source, install) as a "
                                                             "Markdown table")
    zoo.set_defaults(handler=_zoo)
    check = commands.add_parser("check", help="validate every params section and the data paths at once, before "
                                              "any stage runs; lists all problems")
    check.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    check.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param as `dvc exp run -S` would (repeatable)")
    check.set_defaults(handler=_check)
    compare = commands.add_parser("compare-committed", help="after a rerun: say whether it reproduced the committed "
                                                            "metrics and dvc.lock, and what moved (make repro runs it)")
    compare.add_argument("--revision", default="HEAD", help="the commit to compare with (default: HEAD)")
    compare.add_argument("--repo", default=".", help="the git/DVC repository (default: current directory)")
    compare.set_defaults(handler=_compare_committed)
    sweep = commands.add_parser("sweep", help="run a grid of params as queued DVC experiments and rank them by the "
                                              "validation metric")
    sweep.add_argument("grid", nargs="+", metavar="KEY=V1,V2", help="a params key and its values, e.g. "
                                                                   "finetune.lr=1e-4,5e-5 freeze.depth=0,3")
    sweep.add_argument("-j", "--jobs", type=int, help="trials at once (default: the cores / base.num_threads; "
                                                      "one per GPU)")
    sweep.add_argument("--metric", help="validation metric to rank by (default: finetune.select_metric)")
    sweep.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    sweep.add_argument("--repo", default=".", help="the DVC repository (default: current directory)")
    sweep.set_defaults(handler=_sweep)
    tune = commands.add_parser("tune", help="Optuna (TPE, median pruning) over a search space; every trial a DVC "
                                            "experiment")
    tune.add_argument("space", help="params-like YAML of the keys to tune (e.g. examples/tune/text.yaml)")
    tune.add_argument("--trials", type=int, default=8, help="trials this worker runs (default: 8)")
    tune.add_argument("--study", help="study name (default: the space file's name); workers with the same name and "
                                      "storage share one study")
    tune.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite:///.dvc/tmp/"
                                                      "crosstune-tune.db; a database URL for several machines)")
    tune.add_argument("--metric", help="validation metric to optimise (default: finetune.select_metric)")
    tune.add_argument("--seed", type=int, help="TPE's seed (default: base.seed; give each worker its own)")
    tune.add_argument("-S", "--set-param", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                      help="a param every trial runs with (repeatable), e.g. -S evaluate.guard=off")
    tune.add_argument("--table", help="also write the study's trials as a Markdown table to this file")
    tune.add_argument("--repo", default=".", help="the DVC repository (default: current directory)")
    tune.set_defaults(handler=_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


def entry_point() -> None:
    """Console-script entry: ``crosstune ...``."""
    sys.exit(run_main(main))
