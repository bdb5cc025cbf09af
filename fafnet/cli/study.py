"""A comparison of methods under one protocol (docs/protocol.md section 17): variants x seeds
x folds, each trained and evaluated by the real commands, then reported with paired statistics.

    fafnet-study run bench/studies/cmr_cpu.json              # train and evaluate what is not done yet
    fafnet-study run bench/studies/cmr_cpu.json --gpus 0,1   # one worker per GPU, units shared out
    fafnet-study run bench/studies/cmr_cpu.json --unit 7     # one unit (a Slurm array task)
    fafnet-study status bench/studies/cmr_cpu.json           # every unit and where it stands
    fafnet-study report bench/studies/cmr_cpu.json           # tables, statistics and the figure

A study file (JSON) names the variants (each a model and its options: nothing else may differ),
the options every run shares (config.py's options and named configs), the seeds, the folds,
the support indices and the reference variant (docs/studies.md). A unit is one (variant, seed,
fold): its training run and the evaluation of its final snapshot, in
``<out>/<variant>/seed<seed>/fold<fold>/{train,test}/<id>/``. `run` is resumable: a unit whose
evaluation completed is skipped, an interrupted training run is continued from its latest
snapshot (resume=), a finished one is evaluated; seeds go round-robin over the variants, so the
first seed of every variant finishes before any second seed starts. Two variants with one seed
see the same episodes (an episode depends on the seed and the step only). `report` refuses runs
whose protocols differ in anything but the variant and the seed.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from fafnet.io.atomic import atomic_write_json
from fafnet.runtime.runs import COMPLETED, RUNNING, list_runs, run_status

# What a variant may set: the model and its options (anything else would make it another
# protocol, which the report refuses).
VARIANT_KEYS = ("model", "model_options")
# Options a study sets per unit itself.
UNIT_KEYS = ("seed", "eval_fold", "runs_dir", "checkpoint", "resume", "supp_idx")
SPEC_NAME = "study.json"
UNIT_NAME = "unit.json"


@dataclass
class Study:
    """A study file, checked."""
    path: str
    name: str
    out: str
    options: Dict
    named_configs: List[str]
    variants: Dict[str, Dict]
    seeds: Dict[str, List[int]]          # per variant
    folds: List[int]
    supp_idx: List[int]
    reference: str
    raw: Dict = field(default_factory=dict)

    def units(self) -> List["Unit"]:
        """Every (variant, seed, fold), seed-index-major: the first seed of every variant and
        fold comes before any second seed."""
        depth = max(len(seeds) for seeds in self.seeds.values())
        return [Unit(self, variant, self.seeds[variant][i], fold)
                for i in range(depth) for variant in self.variants for fold in self.folds
                if i < len(self.seeds[variant])]


def _fail(path: str, what: str):
    raise ValueError(f"{path}: {what}")


def load_study(path: str, out: Optional[str] = None) -> Study:
    """Read and check a study file (JSON); `out` overrides its output folder."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"study file {path!r} does not exist") from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        _fail(path, "a study file holds a JSON object")
    known = {"name", "out", "options", "named_configs", "variants", "seeds", "folds", "supp_idx", "reference",
             "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        _fail(path, f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(known))})")
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    options = raw.get("options", {})
    if not isinstance(options, dict):
        _fail(path, "options must be an object of config.py's options")
    for key in UNIT_KEYS + VARIANT_KEYS:
        if key in options:
            _fail(path, f"options.{key}: set by the study per unit or per variant, not shared")
    variants = raw.get("variants")
    if not isinstance(variants, dict) or len(variants) < 1:
        _fail(path, "variants must be an object of at least one named variant")
    default_seeds = raw.get("seeds", [2025])
    seeds = {}
    for variant, spec in variants.items():
        if not isinstance(spec, dict) or "model" not in spec:
            _fail(path, f"variant {variant!r} must be an object with a model (and model_options)")
        extra = sorted(set(spec) - set(VARIANT_KEYS) - {"seeds"})
        if extra:
            _fail(path, f"variant {variant!r} sets {extra[0]}: a variant is a model and its options "
                        f"({', '.join(VARIANT_KEYS)}; and its seeds), everything else is shared")
        seeds[variant] = _int_list(path, f"variants.{variant}.seeds", spec.get("seeds", default_seeds))
    reference = raw.get("reference", next(iter(variants)))
    if reference not in variants:
        _fail(path, f"reference {reference!r} is not a variant ({', '.join(variants)})")
    return Study(path=path, name=name, out=out or raw.get("out") or os.path.join("studies_output", name),
                 options=options, named_configs=list(raw.get("named_configs", [])),
                 variants={v: {k: s[k] for k in VARIANT_KEYS if k in s} for v, s in variants.items()},
                 seeds=seeds, folds=_int_list(path, "folds", raw.get("folds", [0])),
                 supp_idx=_int_list(path, "supp_idx", raw.get("supp_idx", [2])), reference=reference, raw=raw)


def _int_list(path: str, name: str, value) -> List[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value) or len(set(value)) != len(value):
        _fail(path, f"{name} must be a non-empty list of distinct integers, got {value!r}")
    return list(value)


def check_study_folder(study: Study) -> None:
    """A study folder belongs to one protocol: refuse to continue one started with other shared
    options (new variants, seeds or folds may be added)."""
    saved_path = os.path.join(study.out, SPEC_NAME)
    if os.path.isfile(saved_path):
        with open(saved_path, encoding="utf-8") as f:
            saved = json.load(f)
        for key in ("options", "named_configs", "supp_idx"):
            if saved.get(key) != study.raw.get(key):
                raise ValueError(f"{study.out} holds a study started with other {key} ({saved.get(key)!r}, "
                                 f"now {study.raw.get(key)!r}): its runs would not share one protocol; "
                                 f"give another output folder (--out)")
        for variant, spec in study.variants.items():
            before = (saved.get("variants") or {}).get(variant)
            if before is not None and {k: before.get(k) for k in VARIANT_KEYS} != {k: spec.get(k) for k in VARIANT_KEYS}:
                raise ValueError(f"{study.out}: variant {variant!r} was started as {before!r}, now {spec!r}; "
                                 f"give the changed variant another name")
    os.makedirs(study.out, exist_ok=True)
    atomic_write_json(study.raw, saved_path)


# ----------------------------------------------------------------------------- units


@dataclass
class Unit:
    """One (variant, seed, fold) of a study: its training run and its evaluation."""
    study: Study
    variant: str
    seed: int
    fold: int

    @property
    def folder(self) -> str:
        return os.path.join(self.study.out, self.variant, f"seed{self.seed}", f"fold{self.fold}")

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed} fold {self.fold}"

    def options(self) -> Dict:
        """The config updates of its runs (the evaluation adds its checkpoint)."""
        return {**self.study.options, **self.study.variants[self.variant], "seed": self.seed,
                "eval_fold": self.fold, "runs_dir": self.folder, "supp_idx": list(self.study.supp_idx)}

    def training_runs(self) -> List[Tuple[str, Optional[str]]]:
        """(run folder, status) of its training runs, oldest first."""
        return [(path, run_status(path)) for _, path in list_runs(os.path.join(self.folder, "train"))]

    def finished_training(self) -> Optional[str]:
        """Its newest completed training run with a final snapshot."""
        for path, status in reversed(self.training_runs()):
            if status == COMPLETED and os.path.isfile(os.path.join(path, "snapshots", "final.pth")):
                return path
        return None

    def resumable_training(self) -> Optional[str]:
        """Its newest unfinished training run with a full snapshot to continue from."""
        for path, status in reversed(self.training_runs()):
            if status != COMPLETED and os.path.isfile(os.path.join(path, "snapshots", "latest.pth")):
                return path
        return None

    def evaluation(self) -> Optional[str]:
        """Its newest completed evaluation run (results.json) of a checkpoint of its own training
        runs. The training run's snapshots need not be there any more: a study folder kept without
        them (bench/results/studies/) still counts its finished units."""
        train = os.path.abspath(os.path.join(self.folder, "train")) + os.sep
        for _, path in reversed(list_runs(os.path.join(self.folder, "test"))):
            if run_status(path) != COMPLETED or not os.path.isfile(os.path.join(path, "results.json")):
                continue
            with open(os.path.join(path, "results.json"), encoding="utf-8") as f:
                checkpoint = json.load(f)["protocol"]["checkpoint"]
            if os.path.abspath(checkpoint).startswith(train):
                return path
        return None

    def state(self) -> str:
        """done, evaluate, resume, running, train."""
        if self.evaluation():
            return "done"
        if self.finished_training():
            return "evaluate"
        if any(status == RUNNING for _, status in self.training_runs()):
            return "running"
        return "resume" if self.resumable_training() else "train"


def run_unit(unit: Unit, log=print) -> str:
    """Bring one unit to "done" with the real training and evaluation experiments (in this
    process). Returns the evaluation run folder."""
    from fafnet.cli.evaluate import experiment as evaluation_experiment
    from fafnet.cli.train import experiment as training_experiment

    state = unit.state()
    if state == "running":
        raise RuntimeError(f"{unit.label}: a training run in {unit.folder}/train is still running")
    if state in ("train", "resume"):
        updates = unit.options()
        if state == "resume":
            updates["resume"] = unit.resumable_training()
            log(f"[study] {unit.label}: continuing {updates['resume']}")
        else:
            log(f"[study] {unit.label}: training")
        training_experiment().run(config_updates=updates, named_configs=unit.study.named_configs)
    trained = unit.finished_training()
    if trained is None:
        raise RuntimeError(f"{unit.label}: training ended without a final snapshot in {unit.folder}/train")
    if unit.evaluation() is None:
        log(f"[study] {unit.label}: evaluating {trained}")
        evaluation_experiment().run(config_updates={**unit.options(), "checkpoint": trained},
                                    named_configs=unit.study.named_configs)
    atomic_write_json({"variant": unit.variant, "seed": unit.seed, "fold": unit.fold, "training": trained,
                       "evaluation": unit.evaluation(), "options": unit.options(),
                       "named_configs": unit.study.named_configs}, os.path.join(unit.folder, UNIT_NAME))
    return unit.evaluation()


def run_study(study: Study, units: Sequence[Unit], log=print) -> List[str]:
    """Every unit in turn; a unit that fails is reported and the others go on (Ctrl-C stops).
    Returns the labels of the units that failed."""
    failed = []
    for index, unit in enumerate(units):
        if unit.state() == "done":
            continue
        started = time.perf_counter()
        try:
            run_unit(unit, log)
        except KeyboardInterrupt:
            raise
        except Exception as err:   # one unit's failure (bad data, a crash) must not stop the others
            log(f"[study] {unit.label}: FAILED ({type(err).__name__}: {err})")
            failed.append(unit.label)
            continue
        log(f"[study] {unit.label}: done in {(time.perf_counter() - started) / 60:.1f} min "
            f"({index + 1}/{len(units)})")
    return failed


# ----------------------------------------------------------------------------- report


def study_records(study: Study) -> List[Dict]:
    """The run records of every unit whose evaluation completed (fafnet.evaluation.comparison)."""
    records = []
    for unit in study.units():
        evaluation = unit.evaluation()
        if evaluation is None:
            continue
        with open(os.path.join(evaluation, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        records.append({"variant": unit.variant, "seed": unit.seed, "fold": unit.fold,
                        "path": os.path.join(evaluation, "results.json"), "results": results})
    return records


def report(study: Study, out: Optional[str] = None) -> str:
    """Write the study's report (report.md, .csv, .json, .png) into `out` (default
    <study out>/report); returns the folder."""
    from fafnet.evaluation.comparison import check_same_protocol, paired_comparison, variant_summary, write_report

    records = study_records(study)
    if not records:
        raise ValueError(f"{study.out}: no unit of the study has a completed evaluation yet")
    check_same_protocol(records)
    summary = variant_summary(records)
    present = {record["variant"] for record in records}
    if study.reference not in present:
        raise ValueError(f"{study.out}: the reference variant {study.reference!r} has no completed unit yet")
    comparison = paired_comparison(records, study.reference)
    out = out or os.path.join(study.out, "report")
    write_report(summary, comparison, out)
    return out


# ----------------------------------------------------------------------------- command line


def _units_for(study: Study, args) -> List[Unit]:
    units = study.units()
    if args.unit is not None:
        if not 0 <= args.unit < len(units):
            raise ValueError(f"--unit {args.unit}: the study has units 0 to {len(units) - 1}")
        return [units[args.unit]]
    if args.worker is not None:
        index, count = args.worker
        return units[index::count]
    return units


def _parse_worker(text: str) -> Tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: give I/N, e.g. 0/2") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--worker {text!r}: I must be from 0 to N-1")
    return index, count


def _run_command(args) -> int:
    study = load_study(args.study, args.out)
    check_study_folder(study)
    gpus = [g for g in (args.gpus or "").split(",") if g]
    if len(gpus) > 1:   # one worker process per GPU, each taking every n-th unit
        workers = []
        for index, gpu in enumerate(gpus):
            command = [sys.executable, "-m", "fafnet.cli.study", "run", args.study, "--worker",
                       f"{index}/{len(gpus)}"] + (["--out", args.out] if args.out else [])
            environment = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
            workers.append(subprocess.Popen(command, env=environment))
        return max(worker.wait() for worker in workers)
    if len(gpus) == 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
    units = _units_for(study, args)
    print(f"[study] {study.name}: {len(units)} unit(s) in {study.out}")
    failed = run_study(study, units)
    if failed:
        print(f"[study] FAILED: {'; '.join(failed)} (run the command again to retry them)", file=sys.stderr)
        return 1
    print(f"[study] every unit is done; fafnet-study report {args.study}")
    return 0


def _status_command(args) -> int:
    study = load_study(args.study, args.out)
    for index, unit in enumerate(study.units()):
        print(f"{index}\t{unit.label}\t{unit.state()}\t{unit.folder}")
    return 0


def _report_command(args) -> int:
    study = load_study(args.study, args.out)
    folder = report(study, args.report_out)
    with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {folder}/report.md, report.csv, report.json and report.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fafnet-study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train and evaluate every unit that is not done yet")
    run.add_argument("study", help="the study file (JSON)")
    run.add_argument("--out", help="the study's output folder (default: the file's out, else studies_output/<name>)")
    run.add_argument("--gpus", help="comma-separated GPU ids: one worker per GPU (two or more), or the one to use")
    run.add_argument("--unit", type=int, help="run only unit UNIT (0-based, as `status` lists; a Slurm array task)")
    run.add_argument("--worker", type=_parse_worker, help="I/N: run every N-th unit from the I-th (set by --gpus)")
    run.set_defaults(func=_run_command)
    status = commands.add_parser("status", help="list the units and where each stands")
    status.add_argument("study")
    status.add_argument("--out")
    status.set_defaults(func=_status_command)
    rep = commands.add_parser("report", help="tables, paired statistics and the figure of the finished units")
    rep.add_argument("study")
    rep.add_argument("--out", help="the study's output folder")
    rep.add_argument("--report-out", help="where to write the report (default: <study out>/report)")
    rep.set_defaults(func=_report_command)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"fafnet-study: error: {err}", file=sys.stderr)
        return 2


def cli() -> None:
    """The command line (`fafnet-study`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
