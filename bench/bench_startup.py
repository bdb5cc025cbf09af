"""Benchmark of what every experiment pays when it is made: finding run.json's sources and
packages among the imported modules.

Imports the training and evaluation engines (torch, torchvision, SciPy, matplotlib), then
times, alternately so that load from other processes hits both alike:
- Sacred's own "sys" discovery (`get_sources_from_sys_modules` and
  `get_dependencies_from_sys_modules`, what 0.6 used before this change), and
- `fafnet.io.provenance.imported_sources_and_packages` (the same sets, each directory's real
  path resolved once per process),
and checks that both find the same files and packages.

    .venv/bin/python bench/bench_startup.py --repeats 7 [--json startup.json]
"""
import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per variant (default 7)")
    parser.add_argument("--json", default=None, help="also write the timings (seconds) to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv=None) -> Dict[str, List[float]]:
    args = parse_args(argv)
    # What a training or evaluation run has imported when its experiment is made.
    import fafnet.cli.evaluate  # noqa: F401
    import fafnet.cli.train  # noqa: F401
    import fafnet.evaluation.protocol  # noqa: F401
    import fafnet.training.loop  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import scipy.stats  # noqa: F401
    from sacred.dependencies import get_dependencies_from_sys_modules, get_sources_from_sys_modules

    from fafnet.io.atomic import atomic_write_json
    from fafnet.io.provenance import PROJECT_ROOT, imported_sources_and_packages

    def sacred_sys():
        return (get_sources_from_sys_modules({}, PROJECT_ROOT, False),
                get_dependencies_from_sys_modules({}, PROJECT_ROOT))

    def project():
        return imported_sources_and_packages(PROJECT_ROOT)

    variants: Dict[str, Callable] = {"Sacred sys discovery (before)": sacred_sys, "project (now)": project}
    found = {name: function() for name, function in variants.items()}   # the first calls, untimed
    (sacred_sources, sacred_packages), (own_sources, own_packages) = found.values()
    same = ({s.filename for s in sacred_sources} == {s.filename for s in own_sources}
            and {p.to_json() for p in sacred_packages} == {p.to_json() for p in own_packages})
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, function in variants.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    before = statistics.median(times["Sacred sys discovery (before)"])
    print(f"{len(sys.modules)} modules imported; {len(own_sources)} project sources, {len(own_packages)} packages; "
          f"same sets: {'yes' if same else 'NO'}")
    print("| variant | median per experiment | min | ratio to before |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median * 1000:.0f} ms | {min(values) * 1000:.0f} ms | {median / before:.2f} |")
    if args.json:
        atomic_write_json({"modules": len(sys.modules), "sources": len(own_sources), "packages": len(own_packages),
                           "same_sets": same, "seconds": times}, args.json)
    if not same:
        raise SystemExit("the two discoveries found different sources or packages")
    return times


if __name__ == "__main__":
    main()
