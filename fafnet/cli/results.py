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
a chance to say so (SIGKILL, a lost node) as DIED instead of RUNNING, a run.json that
cannot be read as "unreadable run.json", and a resumed run's folders with their links
("continues <run>", "continued in <run>").

Every command refuses runs made on other data: `aggregate`, `compare` and `curve` compare the
data identity results.json records (the sha256 of the dataset's label files) and name the
first differing file; a run written before it was recorded gets a warning. `compare` needs
the same fold, data and evaluation protocol (only the model and checkpoint differ); `curve`
needs one training run's snapshots on one fold with one protocol (only the step differs). A
results.json that is not a JSON object, lacks its protocol fields or holds a NaN score is
refused naming the file. User errors end with one line and exit status 2.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from fafnet.io.atomic import atomic_write_text
from fafnet.evaluation.results import (aggregate_folds, comparison_table, curve_table, data_identity_warnings,
                                       fold_table_csv, fold_table_header, fold_table_markdown, leakage_warnings,
                                       load_results, results_table)
from fafnet.cli.names import program_name
from fafnet.runtime.runs import continuation, list_runs, read_run_json, resumed_from, run_status

PROG = "fafnet-results"   # the usage's name when the command's own name says nothing


def _aggregate_command(args: argparse.Namespace) -> int:
    header, rows = aggregate_folds(args.runs, metric=args.metric)
    runs = [load_results(path) for path in args.runs]
    _warn(leakage_warnings(args.runs) + data_identity_warnings(runs))
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
    table = comparison_table(results, baseline)
    _warn(data_identity_warnings([results, baseline]))
    print(f"{results['_path']} against {baseline['_path']}:\n")
    print(table)
    return 0


def _curve_command(args: argparse.Namespace) -> int:
    runs = [load_results(path) for path in args.runs]
    table = curve_table(runs)
    _warn(data_identity_warnings(runs))
    print(table)
    return 0


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _status_text(run_dir: str) -> str:
    """The run's status; "unreadable run.json" for one that exists but cannot be read (corrupt,
    or caught while Sacred rewrites it), "no run.json" for none."""
    status = run_status(run_dir)
    if status:
        return status
    return "unreadable run.json" if os.path.exists(os.path.join(run_dir, "run.json")) else "no run.json"


def _runs_command(args: argparse.Namespace) -> int:
    for folder in args.folders:
        is_run = os.path.exists(os.path.join(folder, "run.json"))
        runs = list_runs(folder) or ([(None, folder)] if is_run else [])
        if not runs:
            raise FileNotFoundError(f"{folder!r}: no Sacred run folders (<id>/run.json) in it")
        for _, run_dir in runs:
            entry = read_run_json(run_dir) or {}
            experiment = (entry.get("experiment") or {}).get("name", "?")
            print(f"{run_dir}\t{experiment}\t{_status_text(run_dir)}\t"
                  f"started {entry.get('start_time', '?')}\tlast heartbeat {entry.get('heartbeat', '?')}"
                  + _link_text(run_dir))
    return 0


def _link_text(run_dir: str) -> str:
    """A resumed run's links: the run it continues and the run that continues it (one run
    split across folders, fafnet.runtime.runs)."""
    before, after = resumed_from(run_dir), continuation(run_dir)
    return (f"\tcontinues {before}" if before else "") + (f"\tcontinued in {after}" if after else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(PROG), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    aggregate = commands.add_parser(
        "aggregate", help="collect the folds' evaluation runs into the literature's table",
        description="Collect one evaluation run per fold (folders holding results.json, or the "
                    "files themselves) into a table of Dice per organ and mean, with mean +- "
                    "std over folds; print it as Markdown and optionally write .md and .csv. "
                    "Runs whose protocols or data (their label files' sha256) differ are refused.")
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
                                              "per class (e.g. a trained model against its untrained start). "
                                              "The two runs must share the fold, the data (their label files' "
                                              "sha256) and the evaluation protocol; otherwise the command "
                                              "refuses, naming the field.")
    compare.add_argument("run", help="evaluation run folder or results.json")
    compare.add_argument("baseline", help="evaluation run folder or results.json to compare against")
    compare.set_defaults(func=_compare_command)
    curve = commands.add_parser("curve", help="Dice per class against the training step of each checkpoint",
                                description="Print a learning curve: one row per evaluation run (of one "
                                            "training run's snapshots), ordered by the checkpoint's step. "
                                            "Runs of other folds, data or protocols, or of another training "
                                            "run's checkpoints, are refused naming the field.")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


def cli() -> None:
    """The command line (`fafnet-results`, and utils.py at the repository root)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
