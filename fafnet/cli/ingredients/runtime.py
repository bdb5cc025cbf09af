"""The `runtime` ingredient: where and how a run computes (device, bf16, cuDNN) and where its
run folder goes. None of these options changes what is computed beyond floating-point
rounding; training's own speed options (channels_last, cuda_graph, compile, num_workers) are
train.py's, evaluation's are the `evaluation` ingredient's."""
from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import FOLDER, booleans
from fafnet.runtime.devices import DEVICE_CHOICES

runtime = new_ingredient("runtime")


def runtime_options():
    """Device and run folders (a Sacred config scope)."""
    device = "auto"                 # auto, cpu, cuda, cuda:N or mps
    amp_bf16 = False                # bf16 autocast (FFT, probabilities and losses stay float32)
    cudnn_benchmark = True          # CUDA: let cuDNN time its algorithms once per input shape
    runs_dir = "runs"               # Sacred run folders go to <runs_dir>/<train|test>/<id>


runtime.config(runtime_options)


def valid_device(device) -> bool:
    return isinstance(device, str) and (device in ("auto", "cpu", "cuda", "mps")
                                        or (device.startswith("cuda:") and device[5:].isdigit()))


CHECKS = {
    "device": (valid_device, f"must be one of {DEVICE_CHOICES}"),
    "runs_dir": FOLDER,
    **booleans("amp_bf16", "cudnn_benchmark"),
}

validate_on_assembly(runtime, CHECKS)
