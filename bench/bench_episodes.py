"""Benchmark of the episode pipeline: TrainDataset episodes per second, with and without
augmentation, on a small synthetic dataset generated into a temporary folder (phantom
volumes and their supervoxels, the self-supervised training labels).

A GPU training step of 25 ms needs 40 episodes per second; the table says how many
DataLoader workers deliver that (each worker is one process, one thread).

    .venv/bin/python bench/bench_episodes.py                     # 257 x 257, one thread
    .venv/bin/python bench/bench_episodes.py --size 129 --episodes 100 --json episodes.json
"""
import argparse
import math
import statistics
import tempfile
import time
from typing import Dict, List, Optional

import cv2
import torch

from fafnet.io.atomic import atomic_write_json
from fafnet.synthetic.generate import generate_dataset
from fafnet.datasets.specs import get_dataset_spec
from fafnet.episodes.training import TrainDataset

SUPERVOXEL_MIN_SIZE = get_dataset_spec("SYNTHETIC").supervoxel_min_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=257, help="image size (default 257)")
    parser.add_argument("--subjects", type=int, default=6, help="synthetic subjects, >= 5 (default 6)")
    parser.add_argument("--slices", type=int, default=20, help="slices per subject (default 20)")
    parser.add_argument("--episodes", type=int, default=200, help="timed episodes per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed episodes per variant first (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and OpenCV threads (default 1: one DataLoader worker)")
    parser.add_argument("--target-steps-per-s", type=float, default=40.0,
                        help="training steps per second the workers must feed (default 40: a 25 ms step)")
    parser.add_argument("--data-dir", default=None,
                        help="use this generated synthetic folder (with supervoxels) instead of a temporary one")
    parser.add_argument("--min-size", type=int, default=200,
                        help="episode min foreground pixels, as the config's min_size (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("size", "slices", "episodes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.subjects < 5:
        parser.error("--subjects must be at least 5 (five folds)")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    return args


def time_episodes(dataset: TrainDataset, episodes: int, warmup: int) -> List[float]:
    """Seconds per `dataset[i]` for i = warmup .. warmup + episodes - 1 (after `warmup` untimed)."""
    for index in range(warmup):
        dataset[index]
    times = []
    for index in range(warmup, warmup + episodes):
        began = time.perf_counter()
        dataset[index]
        times.append(time.perf_counter() - began)
    return times


def measure(data_dir: str, args: argparse.Namespace) -> Dict[str, Dict[str, float]]:
    results = {}
    for augment in (False, True):
        dataset = TrainDataset(data_dir, dataset="SYNTHETIC", eval_fold=0, setting=1, use_gt=False,
                               supervoxel_min_size=SUPERVOXEL_MIN_SIZE, augment=augment, seed=args.seed,
                               min_size=args.min_size,
                               n_volumes=args.subjects, image_size=(args.size, args.size))
        times = time_episodes(dataset, args.episodes, args.warmup)
        mean = statistics.fmean(times)
        results["with augmentation" if augment else "without augmentation"] = {
            "median_ms": 1e3 * statistics.median(times), "mean_ms": 1e3 * mean,
            "episodes_per_s": 1.0 / mean,
            "workers_needed": max(1, math.ceil(args.target_steps_per_s * mean)),
        }
    return results


def print_table(results: Dict[str, object]) -> None:
    print(f"TrainDataset episodes, {results['size']} x {results['size']}, 1-shot, supervoxel labels, "
          f"{results['threads']} thread(s), {results['episodes']} episodes per variant")
    print(f"{'variant':<24}{'median ms':>11}{'mean ms':>10}{'episodes/s':>12}{'workers for ' + str(results['target_steps_per_s']) + ' steps/s':>26}")
    for name, row in results["variants"].items():
        print(f"{name:<24}{row['median_ms']:>11.2f}{row['mean_ms']:>10.2f}{row['episodes_per_s']:>12.0f}"
              f"{row['workers_needed']:>26d}")


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_episodes_") as folder:
        data_dir = args.data_dir or folder
        if args.data_dir is None:
            began = time.perf_counter()
            generate_dataset(data_dir, n_subjects=args.subjects, size=args.size, n_slices=args.slices,
                             seed=args.seed, supervoxels=True, supervoxel_min_size=SUPERVOXEL_MIN_SIZE,
                             progress=False)
            print(f"generated {args.subjects} synthetic subjects ({args.slices} x {args.size} x {args.size}) with "
                  f"supervoxels in {time.perf_counter() - began:.1f} s")
        variants = measure(data_dir, args)
    results = {"size": args.size, "subjects": args.subjects, "slices": args.slices, "episodes": args.episodes,
               "threads": args.threads, "target_steps_per_s": args.target_steps_per_s, "variants": variants}
    print_table(results)
    if args.json:
        atomic_write_json(results, args.json)
    return results


if __name__ == "__main__":
    main()
