"""The benchmark scripts run end to end on tiny settings (their numbers are not checked, only
that every part runs and reports): bench_episodes on a generated dataset, bench_startup's
discovery comparison, bench_gpu's profile-trace breakdown on a hand-made trace."""
import json

import pytest

from bench import bench_episodes, bench_startup
from bench.bench_gpu import summarize_trace


def test_bench_episodes_reports_both_variants(tmp_path, capsys):
    output = tmp_path / "episodes.json"
    results = bench_episodes.main(["--size", "33", "--subjects", "5", "--slices", "8", "--episodes", "3",
                                   "--warmup", "1", "--min-size", "20", "--json", str(output)])
    assert set(results["variants"]) == {"without augmentation", "with augmentation"}
    for row in results["variants"].values():
        assert row["median_ms"] > 0 and row["episodes_per_s"] > 0 and row["workers_needed"] >= 1
    assert json.loads(output.read_text()) == results
    assert "episodes/s" in capsys.readouterr().out


def test_bench_episodes_rejects_too_few_subjects():
    with pytest.raises(SystemExit):
        bench_episodes.parse_args(["--subjects", "4"])


def test_bench_startup_times_both_discoveries_and_checks_they_agree(tmp_path, capsys):
    times = bench_startup.main(["--repeats", "2", "--json", str(tmp_path / "startup.json")])
    assert {name: len(values) for name, values in times.items()} == {
        "Sacred sys discovery (before)": 2, "project (now)": 2}
    out = capsys.readouterr().out
    assert "same sets: yes" in out and "| project (now) |" in out
    written = json.loads((tmp_path / "startup.json").read_text())
    assert written["same_sets"] is True and written["seconds"] == times
    with pytest.raises(SystemExit):
        bench_startup.parse_args(["--repeats", "0"])


def trace_event(category, name, start, duration):
    return {"ph": "X", "cat": category, "name": name, "ts": start, "dur": duration}


def test_trace_breakdown_counts_kernels_launches_syncs_and_copies():
    trace = {"traceEvents": [
        trace_event("user_annotation", "train_step", 0, 10_000),
        trace_event("kernel", "void regular_fft_c2r<float>", 100, 500),
        trace_event("kernel", "cudnn_conv_kernel", 400, 1_000),       # overlaps the FFT by 200 us
        trace_event("kernel", "cudnn_conv_kernel", 5_000, 1_000),
        trace_event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 7_000, 10),
        trace_event("gpu_memcpy", "Memcpy HtoD (Pageable -> Device)", 50, 40),
        trace_event("cuda_runtime", "cudaLaunchKernel", 90, 8),
        trace_event("cuda_runtime", "cudaLaunchKernel", 390, 6),
        trace_event("cuda_runtime", "cudaStreamSynchronize", 6_900, 300),
        trace_event("cuda_runtime", "cudaMemcpyAsync", 6_990, 30),
        trace_event("cpu_op", "aten::conv2d", 0, 2_000),
        {"ph": "M", "name": "process_name"},
    ]}
    summary = summarize_trace(trace)
    assert summary["wall_ms"] == 10.0
    assert summary["kernel_count"] == 3 and summary["kernel_ms"] == pytest.approx(2.5)
    assert summary["gpu_busy_ms"] == pytest.approx(2.35)   # union: 50-90, 100-1400, 5000-6000, 7000-7010
    assert summary["fft_kernels"] == 1 and summary["fft_ms"] == pytest.approx(0.5)
    assert summary["launch_calls"] == 2 and summary["launch_cpu_ms"] == pytest.approx(0.014)
    assert summary["sync_calls"] == 1 and summary["sync_ms"] == pytest.approx(0.3)
    assert summary["dtoh_copies"] == 1 and summary["htod_copies"] == 1 and summary["memcpy_calls"] == 1
    assert summary["top_kernels"][0] == {"name": "cudnn_conv_kernel", "count": 2, "ms": pytest.approx(2.0)}


def test_gpu_benchmark_trains_on_the_supervoxels_the_demo_writes(tmp_path):
    # bench_gpu's Dice section builds its episode labels in memory; they must be the labels
    # `python -m fafnet.synthetic --supervoxels` writes for the demo, voxel for voxel.
    pytest.importorskip("fafnet.supervoxels._felzenszwalb_3d")
    import numpy as np
    from bench.bench_gpu import synthetic_supervoxels
    from fafnet.io.nifti import read_volume
    from fafnet.synthetic.generate import generate_dataset
    paths = generate_dataset(str(tmp_path), n_subjects=2, size=40, n_slices=6, seed=3, supervoxels=True,
                             supervoxel_min_size=50, progress=False)
    written, _ = read_volume(paths[-1])                      # supervoxels of subject 1
    in_memory = synthetic_supervoxels(3, 1, size=40, n_slices=6, min_size=50)
    assert written.shape == in_memory.shape == (6, 40, 40)
    assert len(np.unique(in_memory)) > 3
    np.testing.assert_array_equal(written, in_memory)


def cpu_computes_bf16_natively() -> bool:
    """bf16 in hardware (AVX512-BF16 or AMX). Elsewhere PyTorch emulates bf16 convolutions at a
    small fraction of fp32's speed: a ResNet-101 encoder forward of 16 slices at 33 x 33 took
    44 s in bf16 against 1.8 s in fp32 on an AVX2-only EPYC."""
    import torch
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def test_gpu_benchmark_sections_run_on_the_cpu_through_the_package():
    # The training variants are the package's TrainStep and optimiser; the Dice section trains
    # with the package's episode sampler and scores with its evaluation protocol. The fast
    # variants are the bf16 ones where the CPU computes bf16 (the package's bf16 paths have
    # tests of their own: test_train_step, test_experiment), channels-last fp32 elsewhere.
    import math

    import torch

    from bench import bench_gpu
    fast_train, fast_eval = (("fast_bf16_bench", "bf16_b16_bench") if cpu_computes_bf16_natively()
                             else ("fast_fp32_cl_bench", "fp32_cl_b16_bench"))
    args = bench_gpu.parse_args([
        "--device", "cpu", "--size", "33", "--slices", "8", "--steps", "1", "--warmup", "0", "--eval-repeats", "1",
        "--train-variants", f"baseline,{fast_train}", "--eval-variants", f"baseline_b8,{fast_eval}",
        "--no-profile", "--min-variant-s", "0", "--dice-size", "33", "--dice-slices", "8", "--dice-subjects", "5",
        "--dice-steps", "2", "--dice-seeds", "1", "--dice-labels", "gt", "--dice-min-size", "20"])
    device = torch.device("cpu")
    train = bench_gpu.Recorder(None)
    bench_gpu.section_train(args, device, bench_gpu.Budget(300), train)
    assert set(train.data["train"]) == {"baseline", fast_train}
    assert {r["status"] for r in train.data["train"].values()} == {"ok"}
    assert set(train.data["train"]["baseline"]["first_values"]) == {
        "loss", "query_loss", "align_loss", "proto_loss", "grad_norm"}
    evaluation = train.data["eval"]
    assert evaluation["baseline_b8"]["status"] == "ok" and evaluation[fast_eval]["status"] == "ok"
    assert evaluation[fast_eval]["mean_abs_diff"] >= 0 and train.data["eval_inputs"]["ep1_chunks"] > 0
    dice = bench_gpu.Recorder(None)
    args.dice_train_variant, args.dice_eval_variant = fast_train, fast_eval
    bench_gpu.section_dice(args, device, bench_gpu.Budget(300), dice)
    runs = dice.data["seeds"]["0"]
    for label in ("fp32", "fast"):
        assert runs[label]["status"] == "ok", runs[label]
        for scores in (runs[label]["dice_fp32_eval"], runs[label]["dice_fast_eval"]):
            assert 0.0 <= scores["mean_dice"] <= 100.0 and set(scores["per_class"]) <= {1, 2, 3, 6}
            assert scores["mean_dice"] == pytest.approx(sum(scores["per_class"].values()) / len(scores["per_class"]))
    assert math.isfinite(runs["untrained"]["dice_fp32_eval"]["mean_dice"])
    assert runs["fp32"]["parity_fast_eval"]["hard_dice_vs_fp32"] > 0.5
