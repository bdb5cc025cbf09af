"""Benchmark of the FAF-Net model: training step and volume inference.

Measures, in one run and on one device:
- one training step (1 support + 1 query, forward + backward + SGD step), as this project
  runs it (layer4 skipped) and as the release runs it (layer4 + reduce2 run and discarded);
- segmenting a query volume of --slices slices with `FAFNet.predict` (support encoded once,
  queries in batches, no layer4) against the release's evaluation loop (one forward per
  slice, re-encoding the support every time, layer4 run).
The two variants are timed alternately so that load from other processes hits both alike.

    .venv/bin/python bench/bench_model.py --device cpu --repeats 3 --infer-repeats 1 --infer-warmup 0 --threads 2
    python bench/bench_model.py --device cuda --repeats 10 --json bench_model.json
"""
import argparse
import copy
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from tqdm import tqdm

from fafnet.io.atomic import atomic_write_json
from fafnet.models import FAFNet, total_loss


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--image-size", type=int, default=257, help="square image size (default 257)")
    parser.add_argument("--slices", type=int, default=30, help="slices of the query volume (default 30)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="predict() query batch size (default: 1 on CPU, 8 otherwise)")
    parser.add_argument("--repeats", type=int, default=5, help="timed training steps per variant (default 5)")
    parser.add_argument("--infer-repeats", type=int, default=None,
                        help="timed volume segmentations per variant (default: --repeats)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each variant first (default 1)")
    parser.add_argument("--infer-warmup", type=int, default=None,
                        help="untimed volume segmentations per variant first (default: --warmup)")
    parser.add_argument("--amp", choices=["none", "bf16"], default="none", help="bfloat16 autocast (default none)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    parser.add_argument("--predict-channels-last", choices=["auto", "on", "off"], default="auto",
                        help="memory format of the predict() variant; auto (default): as test.py runs "
                             "it, channels-last on CPU, else --channels-last. The release's loop uses "
                             "--channels-last")
    parser.add_argument("--no-tf32", action="store_true",
                        help="CUDA: disable TF32 convolutions/matmuls (PyTorch enables TF32 convolutions by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("image_size", "slices", "batch_size", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.predict_channels_last == "auto":
        args.predict_channels_last = "on" if args.device == "cpu" or args.channels_last else "off"
    if args.infer_repeats is None:
        args.infer_repeats = args.repeats
    if args.infer_warmup is None:
        args.infer_warmup = args.warmup
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternately(variants: Dict[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device, label: str) -> Dict[str, List[float]]:
    """Runs each variant `warmup` times untimed, then `repeats` timed rounds, alternating."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times = {name: [] for name in variants}
    for _ in tqdm(range(repeats), desc=label, leave=False):
        for name, run in variants.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


class Episode:
    """Random inputs of the benchmark, on the device."""

    def __init__(self, size: int, slices: int, device: torch.device, channels_last: bool, seed: int):
        generator = torch.Generator().manual_seed(seed)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.support = torch.randn(1, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        self.query = torch.randn(1, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        self.volume = torch.randn(slices, 3, size, size, generator=generator).to(device, memory_format=memory_format)
        mask = torch.zeros(1, size, size)
        mask[:, size // 4: size // 2, size // 3: 2 * size // 3] = 1.0
        self.mask = mask.to(device)
        self.labels = mask.long().to(device)


def build_model(args: argparse.Namespace, device: torch.device) -> FAFNet:
    torch.manual_seed(args.seed)
    model = FAFNet(image_size=(args.image_size, args.image_size)).to(device)
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


@torch.no_grad()
def set_batchnorm_statistics(model: FAFNet, images: torch.Tensor) -> None:
    """Running statistics := those of `images`. A random ResNet-101 with the default running
    statistics has activations of order 1e5 in eval mode (overflowing under bfloat16); a
    trained one does not, and the inference timing should not depend on that."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    model.encoder(images)
    model.eval()


def bench_training(args, device, data, autocast) -> Dict[str, List[float]]:
    model = build_model(args, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)

    def train_step(with_layer4: bool) -> None:
        model.train()
        model.encoder.run_discarded_layers = with_layer4
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            _, losses = model(data.support, data.mask, data.query, data.labels)
            loss = total_loss(losses)
        loss.backward()
        optimizer.step()

    return time_alternately({"train_step": lambda: train_step(False),
                             "train_step_with_layer4": lambda: train_step(True)},
                            args.repeats, args.warmup, device, "training steps")


def bench_inference(args, device, data, autocast) -> Tuple[Dict[str, List[float]], Dict[str, float]]:
    model = build_model(args, device)
    set_batchnorm_statistics(model, torch.cat([data.support, data.query]))
    predict_format = torch.channels_last if args.predict_channels_last == "on" else torch.contiguous_format
    predict_model = copy.deepcopy(model).to(memory_format=predict_format)
    predict_support = data.support.contiguous(memory_format=predict_format)
    predict_volume = data.volume.contiguous(memory_format=predict_format)

    def predict() -> torch.Tensor:
        with autocast:
            return predict_model.predict(predict_support, data.mask, predict_volume, batch_size=args.batch_size)

    @torch.no_grad()
    def per_slice_loop() -> torch.Tensor:
        model.encoder.run_discarded_layers = True
        with autocast:
            return torch.cat([model(data.support, data.mask, data.volume[i:i + 1])[0][:, 1]
                              for i in range(args.slices)])

    times = time_alternately({"predict": predict, "per_slice_loop": per_slice_loop},
                             args.infer_repeats, args.infer_warmup, device, "volume inference")
    difference = (predict() - per_slice_loop()).abs()
    return times, {"max": difference.max().item(), "mean": difference.mean().item()}


def main(argv=None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if args.batch_size is None:
        # On CPU one image at a time keeps layer3's activations in cache (measured fastest).
        args.batch_size = 1 if device.type == "cpu" else 8
    data = Episode(args.image_size, args.slices, device, args.channels_last, args.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    train_times = bench_training(args, device, data, autocast)
    infer_times, difference = bench_inference(args, device, data, autocast)

    medians = {name: statistics.median(values) for name, values in {**train_times, **infer_times}.items()}
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "image_size": args.image_size, "slices": args.slices,
        "batch_size": args.batch_size, "amp": args.amp, "channels_last": args.channels_last,
        "predict_channels_last": args.predict_channels_last == "on",
        "tf32_convolutions": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
        "repeats": args.repeats, "infer_repeats": args.infer_repeats,
        "median_seconds": medians, "all_seconds": {**train_times, **infer_times},
        "train_speedup_vs_layer4": medians["train_step_with_layer4"] / medians["train_step"],
        "predict_speedup_vs_per_slice_loop": medians["per_slice_loop"] / medians["predict"],
        "predict_vs_loop_abs_difference": difference,
    }
    print_table(results)
    if args.json:
        atomic_write_json(results, args.json)
    return results


def print_table(results: Dict[str, object]) -> None:
    medians = results["median_seconds"]
    print(f"device: {results['device']}, torch {results['torch']}, {results['image_size']}x{results['image_size']}, "
          f"amp={results['amp']}, channels_last={results['channels_last']}, "
          f"predict channels_last={results['predict_channels_last']}")
    print(f"{'measurement':<44}{'median s':>10}")
    print(f"{'training step (layer4 skipped)':<44}{medians['train_step']:>10.3f}")
    print(f"{'training step with layer4+reduce2 (release)':<44}{medians['train_step_with_layer4']:>10.3f}")
    print(f"{'  ratio release / ours':<44}{results['train_speedup_vs_layer4']:>10.2f}")
    predict_label = f"predict ({results['slices']} slices, batch {results['batch_size']})"
    print(f"{predict_label:<44}{medians['predict']:>10.3f}")
    print(f"{'per-slice loop (release evaluation)':<44}{medians['per_slice_loop']:>10.3f}")
    print(f"{'  ratio loop / predict':<44}{results['predict_speedup_vs_per_slice_loop']:>10.2f}")
    difference = results["predict_vs_loop_abs_difference"]
    print(f"|predict - loop|: max {difference['max']:.2e}, mean {difference['mean']:.2e}")


if __name__ == "__main__":
    main()
