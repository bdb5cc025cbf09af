"""The `evaluation` ingredient (test.py): the checkpoint, the protocol's support and chunks,
inference speed options and what is written. Defaults: the release's evaluate.sh."""
from fafnet.cli.ingredients.base import new_ingredient, validate_on_assembly
from fafnet.cli.ingredients.checks import POSITIVE, booleans, is_int
from fafnet.cli.ingredients.runtime import runtime
from fafnet.runtime.devices import default_eval_batch_size, default_eval_channels_last

evaluation = new_ingredient("evaluation", ingredients=[runtime])


def evaluation_options(runtime):
    """The evaluation's options (a Sacred config scope; `runtime` is that ingredient's config)."""
    checkpoint = None               # snapshot, training run folder, release checkpoint or "untrained"
    supp_idx = 2                    # support volume: its index in the fold (release script: 2), or a list
    n_part = 3                      # support slices per class and query chunks
    # Query slices per forward pass: 1 on a CPU (larger batches spill layer3's activations
    # out of cache there), 8 on a GPU.
    eval_batch_size = default_eval_batch_size(runtime["device"])
    channels_last = default_eval_channels_last(runtime["device"])  # on for a CPU, off for a GPU (README benchmarks)
    eval_graphs = False             # CUDA: replay each predict call from a captured graph
    save_predictions = True         # write prediction volumes (NIfTI)
    save_figures = True             # write one PNG per class
    # Evaluate a checkpoint whose training volumes include volumes of the evaluated fold
    # (recorded in results.json; the fold table refuses such a run). False: an error.
    allow_leakage = False


evaluation.config(evaluation_options)


def supp_indices_ok(value) -> bool:
    values = value if isinstance(value, (list, tuple)) else [value]
    return len(values) > 0 and all(is_int(v) and v >= 0 for v in values)


CHECKS = {
    "supp_idx": (supp_indices_ok, "must be a fold position (an integer >= 0) or a non-empty list of them"),
    "n_part": POSITIVE, "eval_batch_size": POSITIVE,
    **booleans("channels_last", "eval_graphs", "save_predictions", "save_figures", "allow_leakage"),
}

validate_on_assembly(evaluation, CHECKS)
