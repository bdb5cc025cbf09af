"""Time and peak memory of the package's 3D Felzenszwalb against the straightforward
NumPy-edges port (bench/naive_felzenszwalb.py), on the same volume, in one run.

Each implementation runs in a fresh Python process, so its peak resident memory (ru_maxrss)
is its own; `extra` is that peak minus the resident memory just before the call (the
interpreter, libraries and the input volume excluded). Both label volumes are compared.

    .venv/bin/python bench/bench_supervoxels.py                       # 40 x 257 x 257
    .venv/bin/python bench/bench_supervoxels.py --kind mri                       # no zero edges
    .venv/bin/python bench/bench_supervoxels.py --shape 200 257 257 --skip-baseline
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy import ndimage

from fafnet.io.atomic import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLEMENTATIONS = {"naive": "naive NumPy-edges port", "compact": "data.supervoxels (compact)"}


def synthetic_volume(shape, seed: int = 0, kind: str = "ct") -> np.ndarray:
    """A (D, H, W) volume on [0, 255]: an elliptic body with smooth organ-like blobs of
    different densities, smooth texture and voxel noise. "ct": HU clipped to [-125, 275] as in
    SABS pre-processing, so the air is exactly 0 (many zero-weight edges). "mri": noisy
    background everywhere, no clipping (no zero-weight edges, the compact version's worst case).
    """
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, depth), np.linspace(-1, 1, height),
                          np.linspace(-1, 1, width), indexing="ij")
    hu = np.full(shape, -1000.0)
    body = (y / 0.75) ** 2 + (x / 0.9) ** 2 < 1
    hu[body] = -80.0  # fat
    for _ in range(8):
        centre = rng.uniform(-0.5, 0.5, 3)
        radii = rng.uniform(0.15, 0.45, 3)
        blob = (((z - centre[0]) / (radii[0] * 2)) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                + ((x - centre[2]) / radii[2]) ** 2) < 1
        hu[blob & body] = rng.uniform(20, 250)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(1, 3, 3)) * 60
    hu[body] += texture[body] + rng.standard_normal(int(body.sum())) * 12
    hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.7, 0.7))  # partial-volume edges
    if kind == "mri":
        signal = np.abs(hu + 1000 + rng.standard_normal(shape) * 15)
        return 255.0 * (signal - signal.min()) / (signal.max() - signal.min())
    return (np.clip(hu, -125, 275) + 125) * (255.0 / 400.0)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_worker(args) -> None:
    """Child process: run one implementation, print a JSON line with its measurements."""
    if args.worker == "naive":
        from bench.naive_felzenszwalb import naive_felzenszwalb_3d as segment
    else:
        from fafnet.supervoxels.felzenszwalb_3d import felzenszwalb_3d as segment
    volume = np.load(args.volume)
    rss_before = current_rss_bytes()
    start = time.perf_counter()
    labels = segment(volume, scale=args.scale, sigma=args.sigma, min_size=args.min_size,
                     spacing=tuple(args.spacing))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(args.labels_out, labels.astype(np.int32, copy=False))
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "extra": peak - rss_before,
                      "segments": int(labels.max()) + 1}))


def measure(name: str, args, volume_path: str, labels_path: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--volume",
               volume_path, "--labels-out", labels_path, "--scale", str(args.scale), "--sigma",
               str(args.sigma), "--min-size", str(args.min_size), "--spacing",
               *map(str, args.spacing)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def best_of(name: str, args, volume_path: str, labels_path: str) -> dict:
    """Fastest time and largest memory over --repeats fresh processes."""
    runs = [measure(name, args, volume_path, labels_path) for _ in range(args.repeats)]
    return {"seconds": min(r["seconds"] for r in runs),
            "peak_rss": max(r["peak_rss"] for r in runs),
            "extra": max(r["extra"] for r in runs), "segments": runs[-1]["segments"]}


def print_table(results: dict, num_voxels: int) -> None:
    mib = 1024.0 ** 2
    print(f"{'implementation':<30}{'time s':>9}{'peak RSS MiB':>14}{'extra MiB':>11}"
          f"{'extra B/voxel':>15}{'segments':>10}")
    for name, r in results.items():
        print(f"{IMPLEMENTATIONS[name]:<30}{r['seconds']:>9.2f}{r['peak_rss'] / mib:>14.0f}"
              f"{r['extra'] / mib:>11.0f}{r['extra'] / num_voxels:>15.1f}{r['segments']:>10}")
    if len(results) == 2:
        naive, compact = results["naive"], results["compact"]
        print(f"{'ratio compact / naive':<30}{compact['seconds'] / naive['seconds']:>9.2f}"
              f"{compact['peak_rss'] / naive['peak_rss']:>14.2f}"
              f"{compact['extra'] / naive['extra']:>11.2f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 257, 257],
                        metavar=("D", "H", "W"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.5, 1.4, 1.4],
                        help="voxel spacing (slice, row, column) in mm")
    parser.add_argument("--min-size", type=int, default=5000)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("ct", "mri"), default="ct",
                        help="synthetic volume: CT with clipped air (default) or noisy MRI")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per implementation")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="run only the package's version")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if min(args.shape) < 1 or args.repeats < 1:
        raise SystemExit(f"--shape must be positive and --repeats >= 1, "
                         f"got {args.shape} and {args.repeats}")
    names = ["compact"] if args.skip_baseline else ["naive", "compact"]
    with tempfile.TemporaryDirectory() as scratch:
        volume_path = os.path.join(scratch, "volume.npy")
        np.save(volume_path, synthetic_volume(tuple(args.shape), args.seed, args.kind))
        results = {}
        for name in names:
            print(f"running {IMPLEMENTATIONS[name]} on {tuple(args.shape)} ...", flush=True)
            results[name] = best_of(name, args, volume_path, os.path.join(scratch, f"{name}.npy"))
        identical = None
        if len(names) == 2:
            identical = bool(np.array_equal(np.load(os.path.join(scratch, "naive.npy")),
                                            np.load(os.path.join(scratch, "compact.npy"))))
    num_voxels = int(np.prod(args.shape))
    print_table(results, num_voxels)
    if identical is not None:
        print(f"identical label volumes: {identical}")
    if args.json:
        report = {"shape": args.shape, "kind": args.kind, "spacing": args.spacing,
                  "min_size": args.min_size,
                  "results": results, "identical_labels": identical}
        atomic_write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
