"""Command line for run folders and result tables (the code lives in `fafnet.evaluation.results`
and `fafnet.runtime.runs`).

    python utils.py aggregate runs/SABS_setting1/fold*/test/1 --out runs/SABS_setting1/results_table
    python utils.py show runs/test/4 runs/test/5        # each evaluation run's table
    python utils.py runs runs/train runs/test           # every run with its status
    python utils.py compare runs/test/5 runs/test/6     # Dice of run 5 against run 6, per class
    python utils.py curve runs/test/5 runs/test/6 ...   # Dice against each checkpoint's training step

`aggregate` collects one evaluation run per fold (with the groups protocol: one per fold and
group) into the literature's table (Dice per organ and the mean over organs, one row per
fold, then mean +- std over folds) and writes it as ``<out>.md`` and ``<out>.csv``. It
refuses runs whose protocols differ, naming the field, and runs whose checkpoint was trained
on volumes of the fold they evaluate (test-set leakage); a run whose leakage could not be
checked gets a warning. A class a fold skipped shows as "n/a *" and the notes under the table
say which classes and folds each mean covers. `runs` reports a run killed without
a chance to say so (SIGKILL, a lost node) as DIED instead of RUNNING.
"""
import argparse
import sys
from typing import Optional, Sequence

from fafnet.io.atomic import atomic_write_text
from fafnet.evaluation.results import (aggregate_folds, comparison_table, curve_table, fold_table_csv,
                                fold_table_header, fold_table_markdown, leakage_warnings, load_results,
                                results_table)
from fafnet.runtime.runs import list_runs, read_run_json, run_status


def _aggregate_command(args: argparse.Namespace) -> int:
    header, rows = aggregate_folds(args.runs, metric=args.metric)
    for line in leakage_warnings(args.runs):
        print(f"warning: {line}", file=sys.stderr)
    markdown = fold_table_markdown(header, rows, title=fold_table_header(args.runs))
    print(f"{args.metric} (%) over {len(rows) - 2} fold(s):\n")
    print(markdown)
    if args.out:
        atomic_write_text(markdown, args.out + ".md")
        atomic_write_text(fold_table_csv(header, rows), args.out + ".csv")
        print(f"wrote {args.out}.md and {args.out}.csv")
    return 0


def _show_command(args: argparse.Namespace) -> int:
    for path in args.runs:
        results = load_results(path)
        print(f"{results['_path']}:")
        print(results_table(results))
    return 0


def _compare_command(args: argparse.Namespace) -> int:
    results, baseline = load_results(args.run), load_results(args.baseline)
    print(f"{results['_path']} against {baseline['_path']}:\n")
    print(comparison_table(results, baseline))
    return 0


def _curve_command(args: argparse.Namespace) -> int:
    print(curve_table([load_results(path) for path in args.runs]))
    return 0


def _runs_command(args: argparse.Namespace) -> int:
    for folder in args.folders:
        runs = list_runs(folder) or ([(None, folder)] if read_run_json(folder) else [])
        if not runs:
            raise FileNotFoundError(f"{folder!r}: no Sacred run folders (<id>/run.json) in it")
        for _, run_dir in runs:
            entry = read_run_json(run_dir) or {}
            experiment = (entry.get("experiment") or {}).get("name", "?")
            print(f"{run_dir}\t{experiment}\t{run_status(run_dir) or 'no run.json'}\t"
                  f"started {entry.get('start_time', '?')}\tlast heartbeat {entry.get('heartbeat', '?')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python utils.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    aggregate = commands.add_parser(
        "aggregate", help="collect the folds' evaluation runs into the literature's table",
        description="Collect one evaluation run per fold (folders holding results.json, or the "
                    "files themselves) into a table of Dice per organ and mean, with mean +- "
                    "std over folds; print it as Markdown and optionally write .md and .csv. "
                    "Runs whose protocols differ are refused.")
    aggregate.add_argument("runs", nargs="+", help="evaluation run folders or results.json files")
    aggregate.add_argument("--metric", choices=("dice", "iou"), default="dice")
    aggregate.add_argument("--out", help="write OUT.md and OUT.csv (atomically)")
    aggregate.set_defaults(func=_aggregate_command)
    show = commands.add_parser("show", help="print evaluation runs' results tables",
                               description="Print the Dice/IoU table of each evaluation run.")
    show.add_argument("runs", nargs="+", help="evaluation run folders or results.json files")
    show.set_defaults(func=_show_command)
    compare = commands.add_parser("compare", help="Dice per class of one evaluation run against another",
                                  description="Print the Dice of RUN, of BASELINE and their difference "
                                              "per class (e.g. a trained model against its untrained start).")
    compare.add_argument("run", help="evaluation run folder or results.json")
    compare.add_argument("baseline", help="evaluation run folder or results.json to compare against")
    compare.set_defaults(func=_compare_command)
    curve = commands.add_parser("curve", help="Dice per class against the training step of each checkpoint",
                                description="Print a learning curve: one row per evaluation run (of one "
                                            "training run's snapshots), ordered by the checkpoint's step.")
    curve.add_argument("runs", nargs="+", help="evaluation run folders or results.json files")
    curve.set_defaults(func=_curve_command)
    runs = commands.add_parser("runs", help="list run folders with their status (DIED for killed runs)",
                               description="List the Sacred runs in each folder (or the run folders "
                                           "themselves) with experiment, status and times.")
    runs.add_argument("folders", nargs="+", help="folders of runs (runs/train) or run folders")
    runs.set_defaults(func=_runs_command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Tables hold "±"; a console without UTF-8 (a bare C locale) shows "?" instead of failing.
    if (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "") != "utf8" \
            and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def cli() -> None:
    """The command line (`fafnet-results`, and utils.py at the repository root)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
