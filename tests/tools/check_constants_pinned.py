"""Do the tests pin the method's constants? A one-constant mutation check.

For each mutation below (one constant or one operation of the method, with the exact text it
replaces), this copies the repository to a temporary folder once, applies the mutation there,
runs the test file (or tests) that cover it, restores the file, and reports whether a test
failed ("killed") or everything still passed ("survived"). The working tree is never touched.

    python tests/tools/check_constants_pinned.py              # every mutation, a table at the end
    python tests/tools/check_constants_pinned.py -k elastic   # only mutations whose name contains it
    python tests/tools/check_constants_pinned.py --list

Exit status 1 if a mutation in scope survives, or if the unmutated tests fail. (Every
mutation is in scope today; `in_scope=False` would report one without counting it.)
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_TESTS = "tests/test_known_answers_model.py"
DATA_TESTS = "tests/test_known_answers_data.py"
CONFIG_TESTS = ("tests/test_experiment.py::test_defaults_reproduce_the_authors_scripts "
                "tests/test_experiment.py::test_release_schedule_from_the_default_config_against_hand_values")
# Not copied: version control, build trees, caches (stale bytecode must never be used) and
# run outputs. The compiled supervoxel module inside fafnet/supervoxels/ is copied.
IGNORED = (".git", "build", "__pycache__", ".pytest_cache", "runs", "outputs", "demo_output",
           ".venv", "data_processed", "*.egg-info")


@dataclass(frozen=True)
class Mutation:
    name: str
    files: Tuple[str, ...]   # candidate paths; the first one that exists and holds `old` is used
    old: str                 # must occur exactly once in that file
    new: str
    tests: str
    in_scope: bool = True


def m(name, files, old, new, tests, in_scope=True) -> Mutation:
    return Mutation(name, (files,) if isinstance(files, str) else tuple(files), old, new, tests, in_scope)


FAFNET, MODULES, ENCODER = "fafnet/models/fafnet.py", "fafnet/models/modules.py", "fafnet/models/encoder.py"
AUGMENT, TRAINING, EVALUATION = "fafnet/episodes/augment.py", "fafnet/episodes/training.py", "fafnet/episodes/evaluation.py"
FELZENSZWALB = "fafnet/supervoxels/felzenszwalb_3d.py"
GENERATE = "fafnet/supervoxels/generate.py"
METRICS = "fafnet/evaluation/metrics.py"
LOOP = "fafnet/training/loop.py"
# The config defaults: the root config.py, the file a researcher edits.
CONFIG = "config.py"

MUTATIONS: List[Mutation] = [
    # prediction and losses
    m("similarity scale 20 -> 19", FAFNET, "SIMILARITY_SCALE = 20.0", "SIMILARITY_SCALE = 19.0", MODEL_TESTS),
    m("threshold slope 0.5 -> 0.55", FAFNET, "THRESHOLD_SLOPE = 0.5 ", "THRESHOLD_SLOPE = 0.55", MODEL_TESTS),
    m("prediction upsampling align_corners True -> False", FAFNET,
      "align_corners=True).squeeze(1)", "align_corners=False).squeeze(1)", MODEL_TESTS),
    m("query loss background weight 0.1 -> 0.2", FAFNET, "QUERY_CLASS_WEIGHTS = (0.1, 1.0)",
      "QUERY_CLASS_WEIGHTS = (0.2, 1.0)", MODEL_TESTS),
    m("query loss foreground weight 1.0 -> 0.9", FAFNET, "QUERY_CLASS_WEIGHTS = (0.1, 1.0)",
      "QUERY_CLASS_WEIGHTS = (0.1, 0.9)", MODEL_TESTS),
    m("probability clamp eps float32 eps -> 1e-6", FAFNET, "eps = torch.finfo(torch.float32).eps",
      "eps = 1e-6", MODEL_TESTS),
    m("alignment loss not divided by K", FAFNET,
      "clamped_nll(support_probs, support_masks.round().long())",
      "clamped_nll(support_probs, support_masks.round().long()) * shots", MODEL_TESTS),
    m("prototype loss MSE -> L1", FAFNET, "F.mse_loss(_at_least_float32(refined)",
      "F.l1_loss(_at_least_float32(refined)", MODEL_TESTS),
    m("FAFNet heads 4 -> 2", FAFNET, "heads: int = 4, run_discarded_layers",
      "heads: int = 2, run_discarded_layers", MODEL_TESTS),
    # prototype, ICM, AFF
    m("masked average pooling eps 1e-5 -> 1e-4", MODULES, "MASK_EPS = 1e-5", "MASK_EPS = 1e-4", MODEL_TESTS),
    m("masked average pooling align_corners True -> False", MODULES,
      'mode="bilinear", align_corners=True)', 'mode="bilinear", align_corners=False)', MODEL_TESTS),
    m("attention scale sqrt(C) -> sqrt(m C)", MODULES, "return logits / math.sqrt(self.channels)",
      "return logits / math.sqrt(self.heads * self.channels)", MODEL_TESTS),
    m("attention scale sqrt(C) -> none", MODULES, "return logits / math.sqrt(self.channels)",
      "return logits", MODEL_TESTS),
    m("ICM residual p' = p + x -> x", MODULES, "return prototypes + self.out_proj(",
      "return self.out_proj(", MODEL_TESTS),
    m("ICM default heads 4 -> 8", MODULES,
      "heads: int = 4, feature_size: Tuple[int, int] = (65, 65),\n                 aff: bool = True):",
      "heads: int = 8, feature_size: Tuple[int, int] = (65, 65),\n                 aff: bool = True):",
      MODEL_TESTS),
    m("AFF default heads 4 -> 8", MODULES,
      "heads: int = 4, feature_size: Tuple[int, int] = (65, 65)):\n        super().__init__()\n        self.amplitude",
      "heads: int = 8, feature_size: Tuple[int, int] = (65, 65)):\n        super().__init__()\n        self.amplitude",
      MODEL_TESTS),
    m("rfft2 norm backward -> ortho", MODULES, 'rfft2(attention.to(dtype), norm="backward")',
      'rfft2(attention.to(dtype), norm="ortho")', MODEL_TESTS),
    m("irfft norm backward -> forward", MODULES, 'n=width, dim=-1, norm="backward")',
      'n=width, dim=-1, norm="forward")', MODEL_TESTS),
    m("amplitude multiplied -> added", MODULES, "spectrum.abs() * amplitude_filter",
      "spectrum.abs() + amplitude_filter", MODEL_TESTS),
    m("phase multiplied -> added", MODULES, "spectrum.angle() * phase_filter",
      "spectrum.angle() + phase_filter", MODEL_TESTS),
    m("AFF generator without the 3x3 residual", MODULES, "a2 = self.conv_mid(F.relu(a1)) + a1",
      "a2 = self.conv_mid(F.relu(a1))", MODEL_TESTS),
    m("AFF generator without the final ReLU", MODULES, "a3 = F.relu(self.conv_heads(F.relu(a2)))",
      "a3 = self.conv_heads(F.relu(a2))", MODEL_TESTS),
    m("AFF generator without the ReLU before C -> m", MODULES, "a3 = F.relu(self.conv_heads(F.relu(a2)))",
      "a3 = F.relu(self.conv_heads(a2))", MODEL_TESTS),
    m("AFF 3x3 conv -> 1x1", MODULES, "kernel_size=3, padding=1, bias=False",
      "kernel_size=1, padding=0, bias=False", MODEL_TESTS),
    m("AFF spectrum width w//2+1 -> w//2", MODULES, "self.spectrum_size = (height, width // 2 + 1)",
      "self.spectrum_size = (height, width // 2)", MODEL_TESTS),
    # encoder
    m("dilation [True, True, False] -> [False, True, False]", ENCODER,
      "replace_stride_with_dilation=[True, True, False]", "replace_stride_with_dilation=[False, True, False]",
      MODEL_TESTS),
    m("dilation [True, True, False] -> [True, True, True]", ENCODER,
      "replace_stride_with_dilation=[True, True, False]", "replace_stride_with_dilation=[True, True, True]",
      MODEL_TESTS),
    m("feature size: conv1 padding 3 -> 2", ENCODER, "kernel=7, stride=2, padding=3)",
      "kernel=7, stride=2, padding=2)", MODEL_TESTS),
    m("kaiming fan_out -> fan_in", ENCODER, 'mode="fan_out"', 'mode="fan_in"', MODEL_TESTS),
    m("kaiming nonlinearity relu -> linear", ENCODER, 'nonlinearity="relu"', 'nonlinearity="linear"', MODEL_TESTS),
    m("kaiming normal -> uniform", ENCODER, "nn.init.kaiming_normal_(", "nn.init.kaiming_uniform_(", MODEL_TESTS),
    m("BatchNorm weight 1 -> 0.5", ENCODER, "nn.init.ones_(module.weight)",
      "nn.init.constant_(module.weight, 0.5)", MODEL_TESTS),
    m("BatchNorm bias 0 -> 0.1", ENCODER, "nn.init.zeros_(module.bias)",
      "nn.init.constant_(module.bias, 0.1)", MODEL_TESTS),
    # optimiser wiring (the numbers 0.9 / 5e-4 / 1e-3 themselves are config.py defaults)
    m("SGD with Nesterov momentum", LOOP, 'momentum=config["momentum"],',
      'momentum=config["momentum"], nesterov=True,', MODEL_TESTS),
    m("SGD dampening 0 -> 0.1", LOOP, 'momentum=config["momentum"],',
      'momentum=config["momentum"], dampening=0.1,', MODEL_TESTS),
    m("SGD weight decay dropped", LOOP, 'weight_decay=config["weight_decay"], **fastest)\n    if name == "adam"',
      'weight_decay=0.0, **fastest)\n    if name == "adam"', MODEL_TESTS),
    # augmentation
    m("gamma range (0.5, 1.5) -> (0.5, 1.6)", AUGMENT, "GAMMA_RANGE = (0.5, 1.5)", "GAMMA_RANGE = (0.5, 1.6)",
      DATA_TESTS),
    m("gamma range (0.5, 1.5) -> (0.4, 1.5)", AUGMENT, "GAMMA_RANGE = (0.5, 1.5)", "GAMMA_RANGE = (0.4, 1.5)",
      DATA_TESTS),
    m("gamma eps 1e-5 -> 1e-4", AUGMENT, "_EPS = 1e-5", "_EPS = 1e-4", DATA_TESTS),
    m("rotation +-5 -> +-6 deg", AUGMENT, "ROTATION_DEG = 5.0", "ROTATION_DEG = 6.0", DATA_TESTS),
    m("shift +-5 -> +-6 px", AUGMENT, "SHIFT_PX = 5.0", "SHIFT_PX = 6.0", DATA_TESTS),
    m("shear +-5 -> +-6 deg", AUGMENT, "SHEAR_DEG = 5.0", "SHEAR_DEG = 6.0", DATA_TESTS),
    m("zoom (0.9, 1.2) -> (0.9, 1.25)", AUGMENT, "ZOOM_RANGE = (0.9, 1.2)", "ZOOM_RANGE = (0.9, 1.25)", DATA_TESTS),
    m("zoom (0.9, 1.2) -> (0.8, 1.2)", AUGMENT, "ZOOM_RANGE = (0.9, 1.2)", "ZOOM_RANGE = (0.8, 1.2)", DATA_TESTS),
    m("affine order: shift before shear", AUGMENT, "(scaling @ shear @ translation @ rotation)",
      "(scaling @ translation @ shear @ rotation)", DATA_TESTS),
    m("shear matrix -sin a -> +sin a", AUGMENT, "[[1.0, -math.sin(a), 0.0]", "[[1.0, math.sin(a), 0.0]",
      DATA_TESTS),
    m("affine centre (W-1)/2 -> W/2", AUGMENT, "centre = ((width - 1) / 2.0, (height - 1) / 2.0)",
      "centre = (width / 2.0, height / 2.0)", DATA_TESTS),
    m("affine bilinear -> nearest", AUGMENT, "AFFINE_FLAGS = 3", "AFFINE_FLAGS = 0", DATA_TESTS),
    m("elastic alpha 10 -> 12", AUGMENT, "ELASTIC_ALPHA = 10.0", "ELASTIC_ALPHA = 12.0", DATA_TESTS),
    m("elastic sigma 5 -> 6", AUGMENT, "ELASTIC_SIGMA = 5.0", "ELASTIC_SIGMA = 6.0", DATA_TESTS),
    m("elastic kernel 21 -> 19", AUGMENT, "ELASTIC_KSIZE = 21", "ELASTIC_KSIZE = 19", DATA_TESTS),
    m("elastic noise U(-1, 1) -> U(0, 1)", AUGMENT, "rng.uniform(-1.0, 1.0, size=shape)",
      "rng.uniform(0.0, 1.0, size=shape)", DATA_TESTS),
    m("elastic border reflect -> reflect_101", AUGMENT, "borderMode=cv2.BORDER_REFLECT)",
      "borderMode=cv2.BORDER_REFLECT_101)", DATA_TESTS),
    m("geometric order: elastic before affine", AUGMENT, "warp_elastic(warp_affine(stacked, matrix), field)",
      "warp_affine(warp_elastic(stacked, field), matrix)", DATA_TESTS),
    m("gamma coin 0.5 -> 0.55", AUGMENT, "if rng.random() < 0.5:\n        support_images = random_gamma",
      "if rng.random() < 0.55:\n        support_images = random_gamma", DATA_TESTS),
    m("geometric coin 0.5 -> 0.45", AUGMENT,
      "if rng.random() < 0.5:\n        support_images, support_masks = random_geometric",
      "if rng.random() < 0.45:\n        support_images, support_masks = random_geometric", DATA_TESTS),
    # episodes
    m("episode min_size 200 -> 201", TRAINING, "min_size: int = 200,", "min_size: int = 201,", DATA_TESTS),
    m("episode min_size 200 -> 199", TRAINING, "min_size: int = 200,", "min_size: int = 199,", DATA_TESTS),
    m("max_iters_per_load 3000 -> 2000", TRAINING, "max_iters_per_load: int = 3000,",
      "max_iters_per_load: int = 2000,", DATA_TESTS),
    m("slice-order reversal 0.5 -> 0.55", TRAINING, "if rng.random() < 0.5:", "if rng.random() < 0.55:",
      DATA_TESTS),
    # evaluation protocol
    m("support fractions (2i+1)/6 -> (2i+1)/7", EVALUATION, "(2 * i + 1) * count // (2 * n_part)",
      "(2 * i + 1) * count // (2 * n_part + 1)", DATA_TESTS),
    m("support positions default n_part 3 -> 4", EVALUATION, "def support_slice_positions(count: int, n_part: int = 3)",
      "def support_slice_positions(count: int, n_part: int = 4)", DATA_TESTS),
    m("chunk boundaries int -> round", EVALUATION, "edges = np.linspace(0, n, n_part + 1).astype(int)",
      "edges = np.round(np.linspace(0, n, n_part + 1)).astype(int)", DATA_TESTS),
    m("TestDataset default n_part 3 -> 2", EVALUATION, "n_part: int = 3, n_volumes", "n_part: int = 2, n_volumes",
      DATA_TESTS),
    m("Dice 2TP/(2TP+FP+FN) -> TP/(TP+FP+FN)", METRICS, "else 2.0 * tp / denominator",
      "else 2.0 * tp / (denominator + tp)", DATA_TESTS),
    # supervoxels
    m("edge factor slice axis s^2 -> s", FELZENSZWALB, "across_slices = {1: s ** 2,", "across_slices = {1: s,",
      DATA_TESTS),
    m("edge factor (1+s^2)/2 -> (1+s^2)/3", FELZENSZWALB, "2: (1 + s ** 2) / 2,", "2: (1 + s ** 2) / 3,", DATA_TESTS),
    m("edge factor (2+s^2)/3 -> (1+s^2)/3", FELZENSZWALB, "3: (2 + s ** 2) / 3}", "3: (1 + s ** 2) / 3}", DATA_TESTS),
    m("edge factor in-plane 1 -> 2", FELZENSZWALB, "[1.0 if dz == 0 else", "[2.0 if dz == 0 else", DATA_TESTS),
    m("spacing ratio s = z/y -> z/x", FELZENSZWALB, "s = float(spacing[0]) / float(spacing[1])",
      "s = float(spacing[0]) / float(spacing[2])", DATA_TESTS),
    m("k = scale/255 -> scale/256", FELZENSZWALB, "scale / 255.0, min_size)", "scale / 256.0, min_size)", DATA_TESTS),
    m("foreground threshold 10 -> 11", GENERATE, "FOREGROUND_THRESHOLD = 10.0", "FOREGROUND_THRESHOLD = 11.0",
      DATA_TESTS),
    m("foreground threshold 10 -> 9", GENERATE, "FOREGROUND_THRESHOLD = 10.0", "FOREGROUND_THRESHOLD = 9.0",
      DATA_TESTS),
    # Config defaults (the release's scripts, in the root config.py): pinned by the experiment tests.
    m("config momentum 0.9 -> 0.95", CONFIG, "momentum = 0.9", "momentum = 0.95", CONFIG_TESTS),
    m("config weight_decay 5e-4 -> 1e-4", CONFIG, "weight_decay = 5e-4", "weight_decay = 1e-4", CONFIG_TESTS),
    m("config lr_gamma 0.98 -> 0.9", CONFIG, "lr_gamma = 0.98", "lr_gamma = 0.9", CONFIG_TESTS),
    m("config lr_step_size 3000 -> 2000", CONFIG, "lr_step_size = 3000", "lr_step_size = 2000", CONFIG_TESTS),
    m("config lr 1e-3 -> 2e-3", CONFIG, "lr = 1e-3", "lr = 2e-3", CONFIG_TESTS),
    m("config n_steps 42000 -> 40000", CONFIG, "n_steps = 42000", "n_steps = 40000", CONFIG_TESTS),
    m("config snapshot_interval 6000 -> 5000", CONFIG, "snapshot_interval = 6000",
      "snapshot_interval = 5000", CONFIG_TESTS),
    m("config seed 2025 -> 2024", CONFIG, "seed = 2025", "seed = 2024", CONFIG_TESTS),
    m("config setting 1 -> 2", CONFIG, "setting = 1 ", "setting = 2 ", CONFIG_TESTS),
    m("config supp_idx 2 -> 0", CONFIG, "supp_idx = 2 ", "supp_idx = 0 ", CONFIG_TESTS),
    m("config n_part 3 -> 4", CONFIG, "n_part = 3 ", "n_part = 4 ", CONFIG_TESTS),
    m("config min_size 200 -> 100", CONFIG, "min_size = 200 ", "min_size = 100 ", CONFIG_TESTS),
    m("config max_iters_per_load 3000 -> 1000", CONFIG, "max_iters_per_load = 3000",
      "max_iters_per_load = 1000", CONFIG_TESTS),
]


def copy_repository(destination: str) -> None:
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)


def run_tests(repository: str, test_file: str) -> Tuple[bool, str, float]:
    """(passed, first failing test or error line, seconds)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                             *test_file.split()],
                            cwd=repository, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)
    if failed:
        reason = failed[0].split("::", 1)[-1]
    else:
        lines = (result.stdout + result.stderr).strip().splitlines()
        reason = lines[-1] if lines else ""
    return result.returncode == 0, reason, seconds


def apply(repository: str, mutation: Mutation) -> Optional[Tuple[str, str]]:
    """Applies the mutation; returns (path, original text) to restore, or None if it does not apply."""
    for relative in mutation.files:
        path = os.path.join(repository, relative)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            original = handle.read()
        count = original.count(mutation.old)
        if count == 0:
            continue
        if count > 1:
            raise ValueError(f"mutation {mutation.name!r}: the text occurs {count} times in {relative}")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(original.replace(mutation.old, mutation.new))
        return path, original
    return None


def check(mutations: Sequence[Mutation]) -> int:
    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="pinned-") as temporary:
        repository = os.path.join(temporary, "repo")
        copy_repository(repository)
        for test_file in sorted({mutation.tests for mutation in mutations}):
            passed, reason, _ = run_tests(repository, test_file)
            if not passed:
                print(f"the unmutated {test_file} fails ({reason}); fix that first")
                return 1
        for number, mutation in enumerate(mutations, 1):
            applied = apply(repository, mutation)
            if applied is None:
                result, reason, seconds = "not applicable", "text not found in " + " / ".join(mutation.files), 0.0
            else:
                try:
                    passed, reason, seconds = run_tests(repository, mutation.tests)
                finally:
                    with open(applied[0], "w", encoding="utf-8") as handle:
                        handle.write(applied[1])
                result = "survived" if passed else "killed"
                if passed:
                    reason = ""
            if mutation.in_scope and result != "killed":
                bad += 1
            scope = "" if mutation.in_scope else " (config.py default, out of scope)"
            rows.append((number, mutation.name + scope, os.path.basename(mutation.tests), result, reason, seconds))
            print(f"[{number}/{len(mutations)}] {mutation.name}: {result} {reason} ({seconds:.1f} s)", flush=True)
    print("\n| # | mutation | test file | result | first failing test | s |")
    print("|---|---|---|---|---|---|")
    for number, name, tests, result, reason, seconds in rows:
        print(f"| {number} | {name} | {tests} | {result} | {reason} | {seconds:.1f} |")
    in_scope = sum(1 for mutation in mutations if mutation.in_scope)
    print(f"\n{in_scope - bad} of {in_scope} mutations in scope killed")
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="pattern", default="", help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    mutations = [mutation for mutation in MUTATIONS if args.pattern.lower() in mutation.name.lower()]
    if args.list:
        for mutation in mutations:
            print(f"{mutation.name}  [{' / '.join(mutation.files)} -> {mutation.tests}]")
        return 0
    if not mutations:
        print(f"no mutation matches {args.pattern!r}")
        return 1
    return check(mutations)


if __name__ == "__main__":
    raise SystemExit(main())
