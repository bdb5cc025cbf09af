"""The GPU benchmark of FAF-Net's training step and evaluation: one script, one device run.

It times and scores the package's own code (fafnet.training, fafnet.evaluation, the episode
sampler); what is here is only timing, variants, parity measures and the report.

    python3 -m bench.bench_gpu --out "$OUT" --budget-s 290          # CUDA, about 5 minutes
    python3 -m bench.bench_gpu --device cpu --size 65 --steps 3 --warmup 1 --eval-repeats 1 \\
        --dice-size 33 --dice-slices 12 --dice-subjects 5 --dice-steps 2 --dice-seeds 1 \\
        --dice-min-size 20 --dice-supervoxel-min 50 --budget-s 900 --out /tmp/bench_gpu   # CPU smoke test

Run it from the repository root as a module (`python -m`), which needs no installation of
the project: the GPU machine has only torch, numpy, scipy and OpenCV. Everything is made in
memory (synthetic phantom volumes), so no SimpleITK, nibabel or sacred is needed either.
1-shot episodes, --size x --size images.

Sections, each in a child process (a CUDA error or a slow compiler cannot take the others
down) under its share of --budget-s; optional parts stop when the share runs out:

train    environment; torch.profiler breakdown of one baseline training step (kernels, launch
         time, host synchronisations, copies, FFT) and of the fastest variant; median step
         time of the package's TrainStep as train.py runs it by default (the baseline: fp32,
         every option off) and with cudnn.benchmark / bf16 autocast / channels-last / CUDA
         graph; then evaluation throughput of the package's prediction (query slices/s) for
         batch 8/16/32, bf16, channels-last and CUDA graphs (of the encoder, or of the whole
         predict call), with output parity against fp32 (on a random network with calibrated
         BatchNorm).
dice     a short synthetic fold, trained as `make demo` trains (97 x 97, supervoxel episodes,
         Adam 2e-4, zero_init_residual, threshold head scaled by 0.05): train with fp32 and
         with the fastest training variant on the same episodes (the package's episode
         sampler over volumes held in memory), evaluate both with the package's evaluation
         protocol (fafnet.evaluation.protocol, EP1), print both mean Dice values; also the
         fast evaluation on the fp32 weights (Dice and output parity on trained weights).
         Supervoxels need the compiled module (`pip install --no-build-isolation --no-deps
         -e .` on the machine, or carry the build); `--dice-labels gt` trains on the ground
         truth minus the test classes instead, which on the phantom is the stomach alone and
         does not transfer to the test organs: a check of agreement, not of learning.
compile  torch.compile of the encoder for training and evaluation, with compile time.

Output: a table per section while running, a summary last; with --out DIR: bench_gpu.json,
profile.txt (profiler tables) and gzipped chrome traces of the two profiled steps.
"""
import argparse
import copy
import gc
import gzip
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from bench.bench_model import set_batchnorm_statistics
from fafnet.io.atomic import atomic_write_json
from fafnet.synthetic.generate import generate_subject
from fafnet.datasets.specs import get_dataset_spec, make_folds
from fafnet.episodes.evaluation import EvaluationFold, TestVolume
from fafnet.episodes.training import EpisodeSampler, make_train_volume, without_classes
from fafnet.episodes.volumes import to_network_images, zscore
from fafnet.evaluation.graphs import GraphedEncoder, GraphedPredict
from fafnet.evaluation.metrics import dice_score
from fafnet.evaluation.predict import InferenceOptions, Timer, chunk_runs, predict_runs
from fafnet.evaluation.protocol import Skips, class_entry, evaluate_class, segment_query
from fafnet.io.logs import error_summary
from fafnet.models import FAFNet, build_model, image_encoder, total_loss
from fafnet.training.loop import build_optimizer, build_scheduler
from fafnet.training.step import TrainStep

SECTIONS = ("train", "dice", "compile")
SHARES = {"train": 0.50, "dice": 0.35}   # of --budget-s; compile gets what is left
TRAIN_PART = 0.55   # of the train section's share for the training variants; evaluation gets the rest
TIMING_LR = 0.0   # timing only: the same kernels run, and a random start cannot diverge to NaN
TEST_CLASSES = get_dataset_spec("SYNTHETIC").test_classes
DEMO_THRESHOLD_SCALE = 0.05   # threshold_head_init_scale of `make demo` (script/demo.sh)
EPISODE_CLASS = 6          # liver: present in most slices of the phantom
# Output parity of a fast evaluation against fp32 on the same weights and inputs.
TOLERANCE_MEAN_ABS = 1e-2          # mean |P_fast - P_fp32|
TOLERANCE_HARD_DICE = 0.98         # Dice between the two hard predictions (P > 0.5)
COMPILED_EVAL = "compiled_encoder"
GOALS = {"train_ms": 25.0, "eval_slices_per_s": 150.0, "dice_points": 0.5}
LOG = logging.getLogger("bench_gpu")   # the protocol's skip warnings


# ============================================================================ small helpers

def say(message: str) -> None:
    print(message, flush=True)


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_json(obj, path: str) -> None:
    atomic_write_json(json.loads(json.dumps(obj, default=str)), path)


def error_text(error: BaseException) -> str:
    return error_summary(error)[:300]


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def set_cudnn_benchmark(enabled: bool) -> None:
    torch.backends.cudnn.benchmark = bool(enabled)


def environment(device: torch.device) -> Dict[str, object]:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "device_type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"device": props.name, "capability": f"{props.major}.{props.minor}",
                     "multiprocessors": props.multi_processor_count,
                     "memory_gib": round(props.total_memory / 2 ** 30, 1), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(),
                     "tf32_convolutions": torch.backends.cudnn.allow_tf32,
                     "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})
    else:
        info["device"] = f"cpu ({torch.get_num_threads()} threads)"
    return info


# ============================================================================ data in memory

def synthetic_volume(seed: int, index: int, size: int, n_slices: int) -> Tuple[np.ndarray, np.ndarray]:
    """A z-scored phantom image [Z, H, W] float32 and its SABS-id labels [Z, H, W] uint8."""
    image, labels, _ = generate_subject(seed, index, size=size, n_slices=n_slices)
    return zscore(image, f"synthetic subject {index}"), labels


def synthetic_supervoxels(seed: int, index: int, size: int, n_slices: int, min_size: int) -> np.ndarray:
    """The supervoxel pseudo-labels of a phantom volume [Z, H, W], as
    `python -m fafnet.synthetic --supervoxels` writes them (the compiled module is required)."""
    from fafnet.supervoxels.generate import header_spacing_release_order, supervoxels_for_volume
    image, _, geometry = generate_subject(seed, index, size=size, n_slices=n_slices)
    return supervoxels_for_volume(image, header_spacing_release_order(geometry), min_size)


def class_slices(labels: np.ndarray, class_id: int) -> List[int]:
    return np.flatnonzero((labels == class_id).any(axis=(1, 2))).tolist()


def pin(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.pin_memory() if device.type == "cuda" else tensor


def timing_episodes(image: np.ndarray, labels: np.ndarray, device: torch.device, count: int = 4) -> List[Dict]:
    """1-shot episodes of adjacent slices (support, query) of the liver, pinned on CUDA."""
    slices = class_slices(labels, EPISODE_CLASS)
    areas = [(labels[s] == EPISODE_CLASS).sum() for s in slices]
    order = [slices[i] for i in np.argsort(areas)[::-1] if slices[i] + 1 in slices][:count]
    episodes = []
    for start in order or [slices[0]]:
        pair = [start, min(start + 1, image.shape[0] - 1)]
        masks = torch.from_numpy((labels[pair] == EPISODE_CLASS).astype(np.float32))
        images = to_network_images(image[pair])
        episodes.append({"support_images": pin(images[:1].clone(), device),
                         "support_masks": pin(masks[:1].clone(), device),
                         "query_images": pin(images[1:].clone(), device),
                         "query_labels": pin(masks[1:].long(), device)})
    return episodes


def in_memory_episodes(volumes: Sequence[Tuple[int, np.ndarray, np.ndarray]], test_classes: Sequence[int],
                       min_size: int, seed: int, augment: bool = True, n_shot: int = 1) -> EpisodeSampler:
    """The package's episode sampling and augmentation over volumes held in memory (the
    benchmark machine cannot read NIfTI files), setting 1. Labels are supervoxels
    (`test_classes` empty) or the ground truth without the test classes (use_gt)."""
    train_volumes = [make_train_volume(index, image, without_classes(labels.copy(), test_classes),
                                       np.ones(image.shape[0], dtype=bool), n_shot, min_size)
                     for index, image, labels in volumes]
    return EpisodeSampler(train_volumes, n_shot, min_size, augment, seed, max_iters_per_load=10 ** 9,
                          source="the synthetic volumes in memory")


def evaluation_fold(volumes: Dict[int, Tuple[np.ndarray, np.ndarray]], fold: Sequence[int],
                    supp_idx: int = 0) -> EvaluationFold:
    """The package's evaluation protocol over fold volumes held in memory."""
    return EvaluationFold({i: TestVolume(i, *volumes[i]) for i in fold}, supp_idx)


# ============================================================================ variants

# name -> (TrainStep options, cudnn.benchmark); "baseline" is TrainStep with every option off,
# as train.py runs by default.
TRAIN_VARIANTS = {   # in order of importance: a short budget drops the last ones
    "baseline": ({}, False),
    "fast_fp32_bench": ({}, True),
    "graph_fp32_bench": ({"cuda_graph": True}, True),
    "graph_bf16_cl_bench": ({"cuda_graph": True, "amp_bf16": True, "channels_last": True}, True),
    "graph_bf16_bench": ({"cuda_graph": True, "amp_bf16": True}, True),
    "fast_bf16_bench": ({"amp_bf16": True}, True),
    "fast_bf16_cl_bench": ({"amp_bf16": True, "channels_last": True}, True),
    "graph_fp32_cl_bench": ({"cuda_graph": True, "channels_last": True}, True),
    "fast_fp32_cl_bench": ({"channels_last": True}, True),
    "baseline_bf16": ({"amp_bf16": True}, False),
}
# name -> (batch size, bf16, channels_last, cudnn.benchmark, CUDA graphs: False, "encoder" or
# "predict" (the whole predict call, fafnet.evaluation.graphs))
EVAL_VARIANTS = {   # the fp32 reference first, then in order of importance
    "baseline_b8": (8, False, False, False, False),
    "fp32_b8_bench": (8, False, False, True, False),
    "bf16_cl_b16_bench": (16, True, True, True, False),
    "predictgraph_bf16_cl_b16_bench": (16, True, True, True, "predict"),
    "predictgraph_fp32_b16_bench": (16, False, False, True, "predict"),
    "encgraph_bf16_cl_b16_bench": (16, True, True, True, "encoder"),
    "fp32_b16_bench": (16, False, False, True, False),
    "bf16_b16_bench": (16, True, False, True, False),
    "predictgraph_bf16_b16_bench": (16, True, False, True, "predict"),
    "bf16_cl_b32_bench": (32, True, True, True, False),
    "encgraph_fp32_b16_bench": (16, False, False, True, "encoder"),
    "bf16_cl_b8_bench": (8, True, True, True, False),
    "fp32_cl_b16_bench": (16, False, True, True, False),
}


def make_train_step(name: str, model, device: torch.device, lr: float = TIMING_LR, optimizer_name: str = "sgd",
                    extra: Optional[Dict] = None) -> TrainStep:
    """train.py's optimiser (the release's SGD, or Adam), a schedule that never decays, and
    TrainStep with the variant's options."""
    options, benchmark = TRAIN_VARIANTS[name] if name in TRAIN_VARIANTS else (dict(extra or {}), True)
    options = {**options, **(extra or {})}
    set_cudnn_benchmark(benchmark and device.type == "cuda")
    optimizer = build_optimizer(model, {"optimizer": optimizer_name, "lr": lr, "momentum": 0.9,
                                        "weight_decay": 5e-4}, device)
    scheduler = build_scheduler(optimizer, [10 ** 9], 0.1)
    return TrainStep(model, optimizer, scheduler, device=device, **options)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_train_variant(name: str, template, episodes: List[Dict], device: torch.device, args,
                       extra: Optional[Dict] = None) -> Dict[str, object]:
    """Median (per step, synchronised) and back-to-back mean step times of one variant,
    starting from `template`'s weights; the first step (algorithm search, graph capture,
    compilation) is timed separately as setup."""
    model = copy.deepcopy(template).to(device).train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = make_train_step(name, model, device, extra=extra)
    result: Dict[str, object] = {"options": {**TRAIN_VARIANTS.get(name, ({}, True))[0], **(extra or {})}}
    try:
        synchronize(device)
        began = time.perf_counter()
        result["first_values"] = step(episodes[0])
        synchronize(device)
        result["setup_s"] = time.perf_counter() - began
        for index in range(args.warmup):
            step(episodes[(index + 1) % len(episodes)])
        times = []
        for index in range(args.steps):
            synchronize(device)
            began = time.perf_counter()
            step(episodes[index % len(episodes)])
            synchronize(device)
            times.append(time.perf_counter() - began)
        synchronize(device)
        began = time.perf_counter()
        for index in range(args.steps):
            step(episodes[index % len(episodes)])
        synchronize(device)
        result.update({
            "median_ms": 1e3 * statistics.median(times), "p10_ms": 1e3 * percentile(times, 10),
            "p90_ms": 1e3 * percentile(times, 90), "back_to_back_ms": 1e3 * (time.perf_counter() - began) / args.steps,
            "graph_captured": bool(getattr(step, "graph_captured", False)),
            "compile_target": getattr(step, "compile_target", None),
            "status": "ok"})
        if device.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    except Exception as error:   # a failing variant is reported; the others go on
        result.update({"status": "failed", "error": error_text(error)})
    finally:
        del step, model
        set_cudnn_benchmark(False)
        free_memory(device)
    return result


# ============================================================================ profiling

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch", "cudaLaunchCooperativeKernel")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
MEMCPY_CALLS = ("cudaMemcpyAsync", "cudaMemcpy", "cudaMemcpy2DAsync")


def _union_ms(intervals: List[Tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total / 1e3


def summarize_trace(trace: Dict, annotation: str = "train_step", top: int = 15) -> Dict[str, object]:
    """Breakdown of a torch.profiler chrome trace (times in ms; trace durations are in us)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]

    def category(event) -> str:
        return str(event.get("cat", "")).lower()

    kernels = [e for e in events if category(e) == "kernel"]
    copies = [e for e in events if category(e) == "gpu_memcpy"]
    sets = [e for e in events if category(e) == "gpu_memset"]
    runtime = [e for e in events if category(e) in ("cuda_runtime", "cuda_driver")]
    windows = [e for e in events if e.get("name") == annotation and category(e) == "user_annotation"]

    def total(items) -> float:
        return sum(float(e["dur"]) for e in items) / 1e3

    def named(items, names) -> List[Dict]:
        return [e for e in items if e.get("name") in names]

    per_kernel: Dict[str, List[float]] = {}
    for event in kernels:
        per_kernel.setdefault(str(event.get("name"))[:100], []).append(float(event["dur"]))
    ranked = sorted(per_kernel.items(), key=lambda item: -sum(item[1]))[:top]
    fft = [e for e in kernels if "fft" in str(e.get("name", "")).lower()]
    dtoh = [e for e in copies if "dtoh" in str(e.get("name", "")).lower()]
    htod = [e for e in copies if "htod" in str(e.get("name", "")).lower()]
    wall = total(windows[:1]) if windows else 0.0
    busy = _union_ms([(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels + copies + sets])
    return {
        "wall_ms": wall, "kernel_count": len(kernels), "kernel_ms": total(kernels), "gpu_busy_ms": busy,
        "gpu_busy_fraction": busy / wall if wall else None,
        "launch_calls": len(named(runtime, LAUNCH_CALLS)), "launch_cpu_ms": total(named(runtime, LAUNCH_CALLS)),
        "sync_calls": len(named(runtime, SYNC_CALLS)), "sync_ms": total(named(runtime, SYNC_CALLS)),
        "memcpy_calls": len(named(runtime, MEMCPY_CALLS)), "memcpy_call_ms": total(named(runtime, MEMCPY_CALLS)),
        "dtoh_copies": len(dtoh), "dtoh_ms": total(dtoh), "htod_copies": len(htod), "htod_ms": total(htod),
        "memset_count": len(sets), "fft_kernels": len(fft), "fft_ms": total(fft),
        "top_kernels": [{"name": name, "count": len(durations), "ms": sum(durations) / 1e3}
                        for name, durations in ranked],
    }


def profile_breakdown_lines(label: str, summary: Dict[str, object]) -> List[str]:
    s = summary
    busy = f"{100 * s['gpu_busy_fraction']:.0f}%" if s.get("gpu_busy_fraction") else "n/a"
    lines = [f"profile {label}: step wall {s['wall_ms']:.1f} ms, GPU busy {s['gpu_busy_ms']:.1f} ms ({busy})",
             f"  kernels {s['kernel_count']} taking {s['kernel_ms']:.1f} ms; launch calls {s['launch_calls']} "
             f"taking {s['launch_cpu_ms']:.1f} ms of CPU",
             f"  host syncs {s['sync_calls']} waiting {s['sync_ms']:.1f} ms; cudaMemcpy calls {s['memcpy_calls']} "
             f"({s['memcpy_call_ms']:.1f} ms); DtoH copies {s['dtoh_copies']} ({s['dtoh_ms']:.2f} ms), "
             f"HtoD copies {s['htod_copies']} ({s['htod_ms']:.2f} ms)",
             f"  FFT kernels {s['fft_kernels']} taking {s['fft_ms']:.2f} ms; memsets {s['memset_count']}"]
    for kernel in s["top_kernels"][:8]:
        lines.append(f"    {kernel['ms']:8.2f} ms {kernel['count']:5d}x  {kernel['name'][:90]}")
    return lines


def key_average_table(prof, row_limit: int = 40) -> str:
    for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
        try:
            return prof.key_averages().table(sort_by=key, row_limit=row_limit)
        except (AttributeError, KeyError, RuntimeError, ValueError):
            continue
    return ""


def profile_one_step(step: Callable, episode: Dict, device: torch.device, label: str,
                     out_dir: Optional[str], warmup: int = 3) -> Tuple[Dict, str]:
    from torch.profiler import ProfilerActivity, profile, record_function
    for _ in range(warmup):
        step(episode)
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with record_function("train_step"):
            step(episode)
            synchronize(device)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as stream:
            summary = summarize_trace(json.load(stream))
        if out_dir and os.path.getsize(path) < 200 * 2 ** 20:
            with open(path, "rb") as source, gzip.open(os.path.join(out_dir, f"trace_{label}.json.gz"), "wb") as sink:
                sink.write(source.read())
    return summary, key_average_table(prof)


def flop_count(template, episode: Dict, device: torch.device) -> Optional[float]:
    """FLOPs of one fp32 training step (forward + backward; convolutions and matrix products)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        model = copy.deepcopy(template).to(device).train()
        inputs = [episode[k].to(device) for k in ("support_images", "support_masks", "query_images")]
        with FlopCounterMode(display=False) as counter:
            _, losses = model(*inputs, episode["query_labels"].to(device))
            total_loss(losses).backward()
        del model
        return float(counter.get_total_flops())
    except Exception as error:
        say(f"flop count failed: {error_text(error)}")
        return None


# ============================================================================ evaluation

def calibrate_batchnorm(model: FAFNet, images: torch.Tensor) -> FAFNet:
    """Running statistics := those of `images` (bench_model's `set_batchnorm_statistics`);
    returns the model in eval mode."""
    set_batchnorm_statistics(model, images)
    return model


class Runner:
    """One evaluation variant: the model (or a GraphedPredict of it, or with the encoder's
    CUDA graphs installed) and the InferenceOptions the package's prediction runs it with."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int, amp_bf16: bool,
                 channels_last: bool, graphs):
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.device = device
        self.options = InferenceOptions(batch_size, channels_last, amp_bf16)
        self.encoder_graphs = self.predict_graphs = None
        if graphs == "encoder" and device.type == "cuda":
            self.encoder_graphs = GraphedEncoder(image_encoder(model)).install()
        elif graphs == "predict" and device.type == "cuda":
            self.predict_graphs = GraphedPredict(model)
        self.model = self.predict_graphs or model

    @property
    def graphs(self):
        return self.encoder_graphs or self.predict_graphs

    def close(self) -> None:
        if self.encoder_graphs is not None:
            self.encoder_graphs.uninstall()

    def probabilities(self, support_images, support_masks, query_images) -> torch.Tensor:
        """Foreground probabilities [n, H, W] of all query slices with support slice 0."""
        run = [(0, 0, int(query_images.shape[0]))]
        return torch.from_numpy(predict_runs(self.model, support_images, support_masks, query_images, run,
                                             self.device, self.options))


class _NoBar:
    def update(self, n: int) -> None:
        pass


def ep1_mean_dice(runner: Runner, volumes: Dict[int, Tuple[np.ndarray, np.ndarray]], fold: Sequence[int],
                  classes: Sequence[int], supp_idx: int = 0) -> Dict[str, object]:
    """Mean Dice (%) over classes of the package's evaluation protocol (fafnet.evaluation.protocol)."""
    data = evaluation_fold(volumes, fold, supp_idx)
    per_class = {}
    for class_id in classes:
        name = f"class {class_id}"
        support, outcomes, _ = evaluate_class(runner.model, data, class_id, name, runner.device, runner.options,
                                              Timer(), Skips(), LOG, _NoBar())
        dice = class_entry(name, support, outcomes)["dice_mean"]
        if dice is not None:
            per_class[int(class_id)] = 100.0 * dice
    return {"mean_dice": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "per_class": per_class}


def ep1_pairs(data: EvaluationFold, classes: Sequence[int]) -> List[Tuple[Dict, Dict]]:
    """(support, query) of every class and query volume holding it, as the protocol builds them."""
    pairs = []
    for class_id in classes:
        try:
            support = data.support(class_id)
        except ValueError:   # the support volume lacks the class
            continue
        pairs += [(support, query) for query in data.queries(class_id) if query["slice_indices"]]
    return pairs


def time_eval_variant(spec: Tuple, eval_model: FAFNet, device: torch.device, volume_inputs, ep1_inputs,
                      reference: Optional[torch.Tensor], args, compile_encoder: bool = False
                      ) -> Tuple[Dict[str, object], Optional[torch.Tensor]]:
    """Throughput of one evaluation variant `spec` (an EVAL_VARIANTS value) on the volume and
    EP1 patterns (the first run of each untimed, as setup), and its output parity with
    `reference` (the fp32 probabilities of the volume pattern)."""
    batch, amp, channels_last, benchmark, graphs = spec
    set_cudnn_benchmark(benchmark and device.type == "cuda")
    model = copy.deepcopy(eval_model)
    runner = Runner(model, device, batch, amp, channels_last, graphs)
    if compile_encoder:
        encoder = image_encoder(model)
        encoder.forward = torch.compile(encoder.forward)
    result: Dict[str, object] = {"batch_size": batch, "amp_bf16": amp, "channels_last": channels_last,
                                 "cudnn_benchmark": benchmark, "graphs": graphs, "compiled": compile_encoder}
    ep1_slices = sum(len(query["slice_indices"]) for _, query in ep1_inputs)
    volume_slices = volume_inputs[2].shape[0]

    def run_volume():
        return runner.probabilities(*volume_inputs)

    def run_ep1():
        for support, query in ep1_inputs:
            segment_query(runner.model, support, query, device, runner.options, Timer())

    probabilities = None
    try:
        timings = {}
        for pattern, run, slices in (("volume", run_volume, volume_slices), ("ep1", run_ep1, ep1_slices)):
            synchronize(device)
            began = time.perf_counter()
            run()   # warm-up: algorithm search, graph capture for every batch shape
            synchronize(device)
            result[f"{pattern}_setup_s"] = time.perf_counter() - began
            times = []
            for _ in range(args.eval_repeats):
                synchronize(device)
                began = time.perf_counter()
                run()
                synchronize(device)
                times.append(time.perf_counter() - began)
            timings[pattern] = statistics.median(times)
            result[f"{pattern}_seconds"] = timings[pattern]
            result[f"{pattern}_slices_per_s"] = slices / timings[pattern]
        probabilities = runner.probabilities(*volume_inputs)
        result["foreground_fraction"] = float((probabilities > 0.5).float().mean())
        if reference is not None:
            difference = (probabilities - reference).abs()
            result.update({"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
                           "hard_dice_vs_fp32": dice_score(probabilities > 0.5, reference > 0.5),
                           "pixels_flipped": float(((probabilities > 0.5) != (reference > 0.5)).float().mean())})
            result["within_tolerance"] = (result["mean_abs_diff"] <= TOLERANCE_MEAN_ABS
                                          and result["hard_dice_vs_fp32"] >= TOLERANCE_HARD_DICE)
        if runner.graphs is not None:
            result["graph_replays"] = runner.graphs.replays
            result["graphs_captured"] = len(runner.graphs.graphs)
        result["status"] = "ok"
    except Exception as error:
        result.update({"status": "failed", "error": error_text(error)})
    finally:
        runner.close()
        del model
        set_cudnn_benchmark(False)
        free_memory(device)
    return result, probabilities


# ============================================================================ sections

class Recorder:
    """The section's results, rewritten to its JSON file after every change."""

    def __init__(self, path: Optional[str]):
        self.path, self.data = path, {}

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.flush()

    def add(self, group: str, key: str, value) -> None:
        self.data.setdefault(group, {})[key] = value
        self.flush()

    def flush(self) -> None:
        if self.path:
            write_json(self.data, self.path)


def train_line(name: str, r: Dict, baseline: Optional[Dict]) -> str:
    if r.get("status") != "ok":
        return f"train {name:<30} FAILED {r.get('error')}"
    delta = ""
    if baseline and baseline.get("first_values") and r.get("first_values"):
        reference = baseline["first_values"]["loss"]
        delta = f", first loss rel. diff {abs(r['first_values']['loss'] - reference) / max(abs(reference), 1e-12):.1e}"
    return (f"train {name:<30} median {r['median_ms']:7.1f} ms (p10 {r['p10_ms']:.1f}, p90 {r['p90_ms']:.1f}, "
            f"back-to-back {r['back_to_back_ms']:.1f}); setup {r['setup_s']:.1f} s; graph {r['graph_captured']}{delta}")


def eval_line(name: str, r: Dict) -> str:
    if r.get("status") != "ok":
        return f"eval  {name:<30} FAILED {r.get('error')}"
    parity = ""
    if "mean_abs_diff" in r:
        parity = (f"; vs fp32 max {r['max_abs_diff']:.1e} mean {r['mean_abs_diff']:.1e} "
                  f"hard Dice {r['hard_dice_vs_fp32']:.4f}")
    return (f"eval  {name:<30} EP1 {r['ep1_slices_per_s']:7.1f} slices/s, volume {r['volume_slices_per_s']:7.1f} "
            f"slices/s (setup {r['volume_setup_s'] + r['ep1_setup_s']:.1f} s){parity}")


def evaluation_setup(template: FAFNet, support_volume, query_volume, device: torch.device, args):
    """(eval model with calibrated BatchNorm, volume pattern inputs, EP1 pattern inputs).

    Volume pattern: one support slice of the liver and all slices of the query volume in one
    predict call. EP1 pattern: for each test class the query volume's slices with the class
    in 3 chunks, each with its own support slice, one predict call per chunk (as test.py)."""
    eval_model = copy.deepcopy(template).to(device)
    calibration = to_network_images(support_volume[0][:: max(1, args.slices // 8)][:8]).to(device)
    calibrate_batchnorm(eval_model, calibration)
    support_slices = class_slices(support_volume[1], EPISODE_CLASS)
    middle = support_slices[len(support_slices) // 2]
    volume_inputs = (to_network_images(support_volume[0][middle:middle + 1]),
                     torch.from_numpy((support_volume[1][middle:middle + 1] == EPISODE_CLASS).astype(np.float32)),
                     to_network_images(query_volume[0]))
    ep1_inputs = ep1_pairs(evaluation_fold({0: support_volume, 1: query_volume}, [0, 1]), TEST_CLASSES)
    return eval_model, volume_inputs, ep1_inputs


def section_train(args, device: torch.device, budget: Budget, record: Recorder) -> None:
    record.set("environment", environment(device))
    say("environment: " + ", ".join(f"{k} {v}" for k, v in record.data["environment"].items()))
    support_volume = synthetic_volume(args.seed, 0, args.size, args.slices)
    query_volume = synthetic_volume(args.seed, 1, args.size, args.slices)
    episodes = timing_episodes(*support_volume, device)
    torch.manual_seed(args.seed)
    template = build_model("fafnet", (args.size, args.size))
    flops = flop_count(template, episodes[0], device)
    record.set("train_step_gflop", flops / 1e9 if flops else None)

    # Profile of the baseline step.
    profile_text = []
    if not args.no_profile:
        try:
            model = copy.deepcopy(template).to(device).train()
            step = make_train_step("baseline", model, device)
            summary, table = profile_one_step(step, episodes[0], device, "baseline", args.out)
            record.add("profile", "baseline", summary)
            profile_text += ["== baseline training step", *profile_breakdown_lines("baseline", summary), table]
            say("\n".join(profile_breakdown_lines("baseline", summary)))
            del step, model
        except Exception as error:
            record.add("profile", "baseline", {"error": error_text(error)})
            say(f"profile baseline FAILED {error_text(error)}")
        free_memory(device)

    # Training variants (on the CPU, one graph variant shows the fallback).
    names = [n for n in args.train_variants if device.type == "cuda" or not n.startswith("graph_") or n == "graph_fp32_bench"]
    training_budget = Budget(min(budget.left(), TRAIN_PART * args.budget_s))
    for name in names:
        if not training_budget.allows(args.min_variant_s):
            record.add("train", name, {"status": "skipped", "error": "out of budget"})
            continue
        result = time_train_variant(name, template, episodes, device, args)
        record.add("train", name, result)
        say(train_line(name, result, record.data["train"].get("baseline")))

    # Profile of the fastest variant.
    best = best_train_variant(record.data.get("train", {}))
    if best and not args.no_profile and budget.allows(args.min_variant_s):
        try:
            model = copy.deepcopy(template).to(device).train()
            step = make_train_step(best, model, device)
            summary, table = profile_one_step(step, episodes[0], device, "fast", args.out)
            record.add("profile", f"fast ({best})", summary)
            profile_text += [f"== fastest training step: {best}", *profile_breakdown_lines(best, summary), table]
            say("\n".join(profile_breakdown_lines(best, summary)))
            del step, model
        except Exception as error:
            record.add("profile", f"fast ({best})", {"error": error_text(error)})
        set_cudnn_benchmark(False)
        free_memory(device)
    if args.out and profile_text:
        with open(os.path.join(args.out, "profile.txt"), "w") as stream:
            stream.write("\n".join(profile_text) + "\n")

    # Evaluation variants.
    eval_model, volume_inputs, ep1_inputs = evaluation_setup(template, support_volume, query_volume, device, args)
    chunk_sizes = [end - start for _, query in ep1_inputs for start, end in query["chunks"] if end > start]
    record.set("eval_inputs", {"volume_slices": int(volume_inputs[2].shape[0]), "ep1_chunks": len(chunk_sizes),
                               "ep1_slices": int(sum(chunk_sizes)), "ep1_chunk_sizes": chunk_sizes})
    reference = None
    for name in args.eval_variants:
        if device.type != "cuda" and EVAL_VARIANTS[name][4] and "fp32" not in name:
            continue
        if not budget.allows(args.min_variant_s):
            record.add("eval", name, {"status": "skipped", "error": "out of budget"})
            continue
        result, probabilities = time_eval_variant(EVAL_VARIANTS[name], eval_model, device, volume_inputs,
                                                  ep1_inputs, reference, args)
        if reference is None and probabilities is not None:
            reference = probabilities   # the first variant (fp32 baseline) is the reference
        record.add("eval", name, result)
        say(eval_line(name, result))


def best_train_variant(results: Dict[str, Dict], exclude: Sequence[str] = ("baseline", "baseline_bf16")) -> Optional[str]:
    ok = {n: r for n, r in results.items() if r.get("status") == "ok" and n not in exclude}
    return min(ok, key=lambda n: ok[n]["median_ms"]) if ok else None


def best_eval_variant(results: Dict[str, Dict], within_tolerance: bool = True) -> Optional[str]:
    """The fastest evaluation variant on the EP1 pattern (optionally only those whose outputs
    on the random calibrated network are within the tolerance)."""
    ok = {n: r for n, r in results.items() if r.get("status") == "ok" and not n.startswith("baseline")
          and (r.get("within_tolerance", True) or not within_tolerance)}
    return max(ok, key=lambda n: ok[n]["ep1_slices_per_s"]) if ok else None


def output_parity(reference: Runner, fast: Runner, volumes, fold: Sequence[int],
                  classes: Sequence[int]) -> Dict[str, float]:
    """Probabilities of two runners on every EP1 chunk of the fold (same weights): max and
    mean |difference|, and the Dice between their hard predictions."""
    differences, hard_a, hard_b = [], [], []
    for support, query in ep1_pairs(evaluation_fold(volumes, fold), classes):
        a, b = (torch.from_numpy(predict_runs(runner.model, support["images"], support["masks"], query["images"],
                                              chunk_runs(query["chunks"]), runner.device, runner.options))
                for runner in (reference, fast))
        differences.append((a - b).abs().flatten())
        hard_a.append((a > 0.5).flatten())
        hard_b.append((b > 0.5).flatten())
    if not differences:
        return {}
    difference, hard_a, hard_b = torch.cat(differences), torch.cat(hard_a), torch.cat(hard_b)
    return {"max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean()),
            "hard_dice_vs_fp32": dice_score(hard_b, hard_a), "pixels_flipped": float((hard_a != hard_b).float().mean())}


def section_dice(args, device: torch.device, budget: Budget, record: Recorder) -> None:
    size, n = args.dice_size, args.dice_subjects
    fast_train = args.dice_train_variant or "fast_bf16_bench"
    fast_eval = args.dice_eval_variant or "bf16_b16_bench"
    labels_used = ("supervoxels, min size %d (setting 1)" % args.dice_supervoxel_min
                   if args.dice_labels == "supervoxels" else
                   "ground truth without the test classes (use_gt, setting 1)")
    record.set("settings", {"size": size, "subjects": n, "steps": args.dice_steps, "optimizer": "adam",
                            "lr": args.dice_lr, "min_size": args.dice_min_size, "labels": labels_used,
                            "zero_init_residual": not args.dice_release_init,
                            "threshold_head_init_scale": 1.0 if args.dice_release_init else DEMO_THRESHOLD_SCALE,
                            "train_variant": fast_train, "eval_variant": fast_eval,
                            "fold": 0, "supp_idx": 0})
    began = time.perf_counter()
    volumes = {i: synthetic_volume(args.seed, i, size, args.dice_slices) for i in range(n)}
    fold = make_folds(n)[0]
    record.set("data_s", time.perf_counter() - began)
    say(f"dice: {n} synthetic subjects {args.dice_slices}x{size}x{size} in {time.perf_counter() - began:.1f} s; "
        f"fold 0 = {fold}; fp32 vs {fast_train} (training), {fast_eval} (evaluation)")
    training = [i for i in range(n) if i not in fold]
    if args.dice_labels == "supervoxels":
        began = time.perf_counter()
        episode_labels = {i: synthetic_supervoxels(args.seed, i, size, args.dice_slices, args.dice_supervoxel_min)
                          for i in training}
        say(f"dice: supervoxels of {len(training)} volumes in {time.perf_counter() - began:.1f} s")
        dataset = in_memory_episodes([(i, volumes[i][0], episode_labels[i]) for i in training], (),
                                     min_size=args.dice_min_size, seed=args.seed)
    else:
        dataset = in_memory_episodes([(i, *volumes[i]) for i in training], TEST_CLASSES,
                                     min_size=args.dice_min_size, seed=args.seed)
    eval_options = EVAL_VARIANTS[fast_eval]

    def evaluate(model, options) -> Dict[str, object]:
        batch, amp, channels_last, benchmark, graphs = options
        set_cudnn_benchmark(benchmark and device.type == "cuda")
        runner = Runner(copy.deepcopy(model).eval(), device, batch, amp, channels_last, graphs)
        try:
            return ep1_mean_dice(runner, volumes, fold, TEST_CLASSES)
        finally:
            runner.close()
            set_cudnn_benchmark(False)

    fp32_eval = (8, False, False, False, False)

    def trained_parity(model) -> Dict[str, float]:
        runners = []
        try:
            for options in (fp32_eval, eval_options):
                set_cudnn_benchmark(options[3] and device.type == "cuda")
                batch, amp, channels_last, _, graphs = options
                runners.append(Runner(copy.deepcopy(model).eval(), device, batch, amp, channels_last, graphs))
            return output_parity(runners[0], runners[1], volumes, fold, TEST_CLASSES)
        finally:
            for runner in runners:
                runner.close()
            set_cudnn_benchmark(False)

    seed_seconds = 0.0
    for seed_offset in range(args.dice_seeds):
        seed = args.seed + seed_offset
        if seed_offset and not budget.allows(1.2 * seed_seconds + 5):
            say(f"dice: no budget for seed {seed} (one seed took {seed_seconds:.0f} s, {budget.left():.0f} s left)")
            break
        seed_began = time.perf_counter()
        episodes = [dataset[seed_offset * 10 ** 6 + i] for i in range(args.dice_steps)]
        episodes = [{k: pin(v, device) if isinstance(v, torch.Tensor) else v for k, v in e.items()} for e in episodes]
        torch.manual_seed(seed)
        # The demo's random start (script/demo.sh), or the release's initialisation.
        random_start = {"zero_init_residual": True, "threshold_head_init_scale": DEMO_THRESHOLD_SCALE}
        template = build_model("fafnet", (size, size), options=None if args.dice_release_init else random_start)
        runs = {}
        for label, variant in (("fp32", "baseline"), ("fast", fast_train)):
            model = copy.deepcopy(template).to(device).train()
            step = make_train_step(variant, model, device, lr=args.dice_lr, optimizer_name="adam")
            entry: Dict[str, object] = {"variant": variant}
            try:
                synchronize(device)
                started = time.perf_counter()
                for episode in episodes:
                    values = step(episode)
                synchronize(device)
                entry.update({"train_s": time.perf_counter() - started, "final_loss": values["loss"]})
                set_cudnn_benchmark(False)
                entry["dice_fp32_eval"] = evaluate(model, fp32_eval)
                entry["dice_fast_eval"] = evaluate(model, eval_options)
                if label == "fp32":
                    entry["parity_fast_eval"] = trained_parity(model)
                entry["status"] = "ok"
            except Exception as error:
                entry.update({"status": "failed", "error": error_text(error)})
            finally:
                del step
                set_cudnn_benchmark(False)
            runs[label] = entry
            del model
            free_memory(device)
        if seed_offset == 0:
            try:
                runs["untrained"] = {"dice_fp32_eval": evaluate(calibrate_batchnorm(
                    copy.deepcopy(template).to(device),
                    to_network_images(volumes[fold[0]][0][::4][:8]).to(device)), fp32_eval)}
            except Exception as error:
                runs["untrained"] = {"error": error_text(error)}
        record.add("seeds", str(seed), runs)
        say(dice_lines(seed, runs))
        seed_seconds = time.perf_counter() - seed_began


def dice_lines(seed: int, runs: Dict) -> str:
    lines = []
    for label in ("fp32", "fast"):
        run = runs.get(label, {})
        if run.get("status") != "ok":
            lines.append(f"dice seed {seed} {label}: FAILED {run.get('error')}")
            continue
        lines.append(f"dice seed {seed} {label:<4} ({run['variant']}): trained in {run['train_s']:.1f} s, final loss "
                     f"{run['final_loss']:.3f}; mean Dice {run['dice_fp32_eval']['mean_dice']:.2f} % (fp32 eval), "
                     f"{run['dice_fast_eval']['mean_dice']:.2f} % (fast eval)")
    untrained = runs.get("untrained", {}).get("dice_fp32_eval")
    if untrained:
        lines.append(f"dice seed {seed} untrained: {untrained['mean_dice']:.2f} %")
    return "\n".join(lines)


def section_compile(args, device: torch.device, budget: Budget, record: Recorder) -> None:
    support_volume = synthetic_volume(args.seed, 0, args.size, args.slices)
    query_volume = synthetic_volume(args.seed, 1, args.size, args.slices)
    episodes = timing_episodes(*support_volume, device)
    torch.manual_seed(args.seed)
    template = build_model("fafnet", (args.size, args.size))
    options = dict(TRAIN_VARIANTS.get(args.compile_base or "fast_bf16_cl_bench", ({}, True))[0])
    options.pop("cuda_graph", None)
    for name, extra in (("compile_encoder", {**options, "compile": "encoder"}),
                        ("compile_encoder_graph", {**options, "compile": "encoder", "cuda_graph": device.type == "cuda"})):
        if not budget.allows(20):
            record.add("train", name, {"status": "skipped", "error": "out of budget"})
            continue
        result = time_train_variant(name, template, episodes, device, args, extra=extra)
        record.add("train", name, result)
        say(train_line(name, result, None) + (" (setup = compilation)" if result.get("status") == "ok" else ""))
    # Evaluation with the encoder compiled (shapes become dynamic after the first recompile).
    if not budget.allows(30):
        record.add("eval", COMPILED_EVAL, {"status": "skipped", "error": "out of budget"})
        return
    eval_model, volume_inputs, ep1_inputs = evaluation_setup(template, support_volume, query_volume, device, args)
    reference_result, reference = time_eval_variant(EVAL_VARIANTS["baseline_b8"], eval_model, device, volume_inputs,
                                                    ep1_inputs, None, args)
    record.add("eval", "baseline_b8 (again)", reference_result)
    base = args.compile_eval_base if args.compile_eval_base in EVAL_VARIANTS else "bf16_cl_b16_bench"
    batch, amp, channels_last, benchmark, _ = EVAL_VARIANTS[base]
    result, _ = time_eval_variant((batch, amp, channels_last, benchmark, False), eval_model, device, volume_inputs,
                                  ep1_inputs, reference, args, compile_encoder=True)
    result["base"] = base
    record.add("eval", COMPILED_EVAL, result)
    say(eval_line(COMPILED_EVAL, result) + " (setup = compilation)")


# ============================================================================ orchestration

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (smoke test)")
    parser.add_argument("--size", type=int, default=257, help="image size of the timings (default 257)")
    parser.add_argument("--slices", type=int, default=30, help="slices of the timing volumes (default 30)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant after the first (default 5)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timed repeats per evaluation pattern (default 3)")
    parser.add_argument("--train-variants", default=",".join(TRAIN_VARIANTS),
                        help="comma-separated training variants (default: all)")
    parser.add_argument("--eval-variants", default=",".join(EVAL_VARIANTS),
                        help="comma-separated evaluation variants, the fp32 reference first (default: all)")
    parser.add_argument("--no-profile", action="store_true", help="skip torch.profiler")
    parser.add_argument("--dice-size", type=int, default=97, help="image size of the synthetic fold (default 97, the demo's)")
    parser.add_argument("--dice-slices", type=int, default=28)
    parser.add_argument("--dice-subjects", type=int, default=10, help="synthetic subjects (default 10: folds of 3)")
    parser.add_argument("--dice-steps", type=int, default=400, help="training steps per run (default 400)")
    parser.add_argument("--dice-seeds", type=int, default=2, help="seeds, budget permitting (default 2)")
    parser.add_argument("--dice-lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4, the demo's)")
    parser.add_argument("--dice-labels", choices=("supervoxels", "gt"), default="supervoxels",
                        help="episode labels (default supervoxels, the paper's and the demo's)")
    parser.add_argument("--dice-supervoxel-min", type=int, default=200, help="supervoxel min size (default 200)")
    parser.add_argument("--dice-min-size", type=int, default=200,
                        help="episode min foreground pixels (default 200, the release's and the demo's)")
    parser.add_argument("--dice-release-init", action="store_true",
                        help="the release's initialisation instead of the demo's random-start options")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=290.0, help="seconds for all sections (default 290)")
    parser.add_argument("--min-variant-s", type=float, default=8.0,
                        help="a variant starts only with this many seconds of its section's share left")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder for bench_gpu.json, profile.txt and traces")
    # Set by the parent process for its children.
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--dice-train-variant", help=argparse.SUPPRESS)
    parser.add_argument("--dice-eval-variant", help=argparse.SUPPRESS)
    parser.add_argument("--compile-base", help=argparse.SUPPRESS)
    parser.add_argument("--compile-eval-base", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.train_variants = [n for n in args.train_variants.split(",") if n]
    args.eval_variants = [n for n in args.eval_variants.split(",") if n]
    args.sections = [s for s in args.sections.split(",") if s]
    for names, known, what in ((args.train_variants, TRAIN_VARIANTS, "--train-variants"),
                               (args.eval_variants, EVAL_VARIANTS, "--eval-variants"),
                               (args.sections, SECTIONS, "--sections")):
        unknown = [n for n in names if n not in known]
        if unknown:
            parser.error(f"{what}: unknown {unknown}; known: {', '.join(known)}")
    if args.size < 16 or args.dice_size < 16:
        parser.error("--size and --dice-size must be at least 16")
    if args.dice_subjects < 5:
        parser.error("--dice-subjects must be at least 5 (five folds)")
    return args


def die_with_parent() -> None:
    """Linux: a child section is killed when the parent dies (the children run in sessions of
    their own, which a timeout of the whole run would otherwise leave running)."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_child(section: str, args, argv: List[str], seconds: float, extra: List[str]) -> Dict:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{section}.json")
        command = [sys.executable, "-m", "bench.bench_gpu", *argv, "--child", section, "--child-json", path,
                   "--budget-s", f"{max(seconds - 10, 5):.0f}", *extra]
        began = time.monotonic()
        status = "ok"
        # A session of its own, so that a timeout also ends the compiler's worker processes.
        child = subprocess.Popen(command, start_new_session=True)
        try:
            code = child.wait(timeout=seconds + 15)
            if code:
                status = f"exit code {code}"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status = f"killed after {seconds + 15:.0f} s"
        data = {}
        if os.path.isfile(path):
            with open(path) as stream:
                data = json.load(stream)
        data["process"] = {"status": status, "seconds": time.monotonic() - began}
        if status != "ok":
            say(f"section {section}: {status}")
        return data


def orchestrate(args, argv: List[str]) -> Dict:
    budget = Budget(args.budget_s)
    results: Dict[str, object] = {"arguments": vars(args), "goals": GOALS,
                                  "tolerance": {"mean_abs": TOLERANCE_MEAN_ABS, "hard_dice": TOLERANCE_HARD_DICE}}
    output = os.path.join(args.out, "bench_gpu.json") if args.out else None
    for section in args.sections:
        share = args.budget_s * SHARES[section] if section in SHARES else budget.left()
        seconds = min(share, budget.left())
        if seconds < 20:
            say(f"section {section}: skipped, {budget.left():.0f} s of the budget left")
            results[section] = {"process": {"status": "skipped", "error": "out of budget"}}
            continue
        extra = []
        train = results.get("train", {})
        if section == "dice":
            extra += ["--dice-train-variant", best_train_variant(train.get("train", {})) or "fast_bf16_bench",
                      "--dice-eval-variant", best_eval_variant(train.get("eval", {}), within_tolerance=False)
                      or "bf16_b16_bench"]
        if section == "compile":
            graphed = {n: r for n, r in train.get("train", {}).items() if n.startswith("graph_")}
            extra += ["--compile-base", best_train_variant(graphed) or "fast_bf16_cl_bench",
                      "--compile-eval-base", best_eval_variant({n: r for n, r in train.get("eval", {}).items()
                                                                if not EVAL_VARIANTS.get(n, (0,) * 5)[4]})
                      or "bf16_cl_b16_bench"]
        say(f"== section {section} ({seconds:.0f} s)")
        results[section] = run_child(section, args, argv, seconds, extra)
        if output:
            write_json(results, output)
    say(summary(results))
    if output:
        write_json(results, output)
    return results


def summary(results: Dict) -> str:
    train_section = results.get("train", {})
    env = train_section.get("environment", {})
    lines = ["", "=" * 100,
             f"SUMMARY  device: {env.get('device')}  torch {env.get('torch')}  CUDA {env.get('cuda')}  "
             f"cuDNN {env.get('cudnn')}  ({env.get('memory_gib')} GiB, {env.get('multiprocessors')} SMs)"]
    flops = train_section.get("train_step_gflop")
    train = {**train_section.get("train", {}), **results.get("compile", {}).get("train", {})}
    baseline = train.get("baseline", {})
    if train:
        lines.append(f"training step, {results['arguments']['size']}x{results['arguments']['size']}, 1 support + 1 query "
                     f"({flops:.0f} GFLOP fwd+bwd)" if flops else "training step")
        lines.append(f"  {'variant':<32}{'median ms':>10}{'b2b ms':>9}{'setup s':>9}{'TFLOP/s':>9}  note")
        for name, r in train.items():
            if r.get("status") != "ok":
                lines.append(f"  {name:<32}{r.get('status', '')[:9]:>10}  {r.get('error', '')[:60]}")
                continue
            rate = f"{flops / r['median_ms']:.0f}" if flops else ""   # GFLOP / ms = TFLOP/s
            note = "graph" if r.get("graph_captured") else ""
            note += f" compiled:{r['compile_target']}" if r.get("compile_target") else ""
            lines.append(f"  {name:<32}{r['median_ms']:>10.1f}{r['back_to_back_ms']:>9.1f}{r['setup_s']:>9.1f}{rate:>9}  {note}")
        best = best_train_variant(train)
        if best and baseline.get("status") == "ok":
            met = "MET" if train[best]["median_ms"] <= GOALS["train_ms"] else "NOT met"
            lines.append(f"  -> baseline {baseline['median_ms']:.1f} ms, fastest {best} {train[best]['median_ms']:.1f} ms "
                         f"({baseline['median_ms'] / train[best]['median_ms']:.2f}x); goal <= {GOALS['train_ms']:.0f} ms: {met}")
    evaluation = {**train_section.get("eval", {}), **results.get("compile", {}).get("eval", {})}
    if evaluation:
        inputs = train_section.get("eval_inputs", {})
        lines.append(f"evaluation, FAFNet.predict: EP1 = {inputs.get('ep1_chunks')} chunks ({inputs.get('ep1_slices')} "
                     f"slices, 4 classes, 3 supports each), volume = {inputs.get('volume_slices')} slices in one call")
        lines.append(f"  {'variant':<32}{'EP1 sl/s':>10}{'vol sl/s':>10}{'max|dP|':>10}{'mean|dP|':>10}{'hardDice':>10}")
        for name, r in evaluation.items():
            if r.get("status") != "ok":
                lines.append(f"  {name:<32}{r.get('status', '')[:10]:>10}  {r.get('error', '')[:60]}")
                continue
            parity = (f"{r['max_abs_diff']:>10.1e}{r['mean_abs_diff']:>10.1e}{r['hard_dice_vs_fp32']:>10.4f}"
                      if "max_abs_diff" in r else f"{'(reference)':>20}")
            lines.append(f"  {name:<32}{r['ep1_slices_per_s']:>10.1f}{r['volume_slices_per_s']:>10.1f}{parity}")
        base = evaluation.get("baseline_b8", {})
        for label, best in (("fastest", best_eval_variant(evaluation, within_tolerance=False)),
                            ("fastest within tolerance", best_eval_variant(evaluation))):
            if best and base.get("status") == "ok":
                met = "MET" if evaluation[best]["ep1_slices_per_s"] >= GOALS["eval_slices_per_s"] else "NOT met"
                lines.append(f"  -> EP1 baseline {base['ep1_slices_per_s']:.0f} slices/s, {label} {best} "
                             f"{evaluation[best]['ep1_slices_per_s']:.0f}; goal >= {GOALS['eval_slices_per_s']:.0f}: {met}")
        lines.append(f"     (parity on a random network with calibrated BatchNorm; tolerance mean|dP| <= "
                     f"{TOLERANCE_MEAN_ABS}, hard Dice >= {TOLERANCE_HARD_DICE}; trained weights: see the Dice section)")
    for label, profile in train_section.get("profile", {}).items():
        if "error" in profile:
            lines.append(f"profile {label}: FAILED {profile['error']}")
        else:
            lines += profile_breakdown_lines(label, profile)[:4]
    seeds = results.get("dice", {}).get("seeds", {})
    settings = results.get("dice", {}).get("settings", {})
    if seeds:
        lines.append(f"synthetic fold 0 Dice ({settings.get('size')}x{settings.get('size')}, {settings.get('steps')} "
                     f"steps, Adam {settings.get('lr')}): fp32 training vs {settings.get('train_variant')}")
        differences = []
        for seed, runs in seeds.items():
            fp32, fast = runs.get("fp32", {}), runs.get("fast", {})
            if fp32.get("status") == "ok" and fast.get("status") == "ok":
                a, b = fp32["dice_fp32_eval"]["mean_dice"], fast["dice_fast_eval"]["mean_dice"]
                c = fp32["dice_fast_eval"]["mean_dice"]
                differences.append(b - a)
                parity = fp32.get("parity_fast_eval") or {}
                if parity:
                    lines.append(f"  seed {seed}: fp32-trained weights, {settings.get('eval_variant')} vs fp32 evaluation: "
                                 f"max|dP| {parity['max_abs_diff']:.1e}, mean|dP| {parity['mean_abs_diff']:.1e}, "
                                 f"hard Dice {parity['hard_dice_vs_fp32']:.4f}")
                lines.append(f"  seed {seed}: fp32 {a:.2f} %, fast {b:.2f} % (diff {b - a:+.2f} points); "
                             f"fp32 weights with the fast evaluation {c:.2f} % ({c - a:+.2f}); train "
                             f"{1e3 * fp32['train_s'] / settings.get('steps', 1):.1f} vs {1e3 * fast['train_s'] / settings.get('steps', 1):.1f} ms/step")
            else:
                lines.append(f"  seed {seed}: fp32 {fp32.get('status')} {fp32.get('error', '')}, fast {fast.get('status')} {fast.get('error', '')}")
            if "untrained" in runs and "dice_fp32_eval" in runs["untrained"]:
                lines.append(f"  seed {seed}: untrained {runs['untrained']['dice_fp32_eval']['mean_dice']:.2f} %")
        fp32_values = [runs["fp32"]["dice_fp32_eval"]["mean_dice"] for runs in seeds.values()
                       if runs.get("fp32", {}).get("status") == "ok"]
        if len(fp32_values) > 1:
            lines.append(f"  fp32 spread over seeds: {max(fp32_values) - min(fp32_values):.2f} points "
                         f"(the scale of run-to-run differences)")
        if differences:
            mean = float(np.mean(differences))
            met = "MET" if abs(mean) <= GOALS["dice_points"] else "NOT met"
            lines.append(f"  -> mean difference {mean:+.2f} points over {len(differences)} seed(s); goal within "
                         f"{GOALS['dice_points']}: {met} (two trainings diverge chaotically: compare with the seed spread)")
    for section in SECTIONS:
        process = results.get(section, {}).get("process")
        if process and process.get("status") != "ok":
            lines.append(f"section {section}: {process.get('status')}")
    lines.append("=" * 100)
    return "\n".join(lines)


def main(argv=None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA device (use --device cpu for a smoke test)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    if args.child is None:
        return orchestrate(args, argv)
    die_with_parent()
    budget = Budget(args.budget_s)
    record = Recorder(args.child_json)
    section = {"train": section_train, "dice": section_dice, "compile": section_compile}[args.child]
    try:
        section(args, device, budget, record)
    except Exception as error:   # recorded, so the parent's summary says what broke
        record.set("error", error_text(error))
        raise
    return record.data


if __name__ == "__main__":
    main()
