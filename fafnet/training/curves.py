"""Training curves of a run: TensorBoard event files and a `progress.png`.

`TrainingCurves.add` takes the same scalars that go to Sacred's metrics.json (losses,
gradient norm, learning rate, seconds per step) at each logged step; the event files go to
`<run folder>/tensorboard/` (`tensorboard --logdir runs/`), and `write_png` draws
`<run folder>/progress.png` (losses, learning rate and gradient norm against the step), the
plot nnU-Net's users look at first. A resumed run's curves begin with the steps the run it
continues logged (`earlier_scalars`), so they show the whole run.
"""
import io
import json
import os
from typing import Dict, List, Optional

from fafnet.io.atomic import atomic_write_bytes


def loss_keys(history: Dict[str, List]) -> List[str]:
    """The logged losses: "loss" (the total) first, then the model's "*_loss" values."""
    return sorted((name for name in history if name == "loss" or name.endswith("_loss")),
                  key=lambda name: name != "loss")


def earlier_scalars(run_dir: str, up_to: int) -> Optional[Dict[int, Dict[str, float]]]:
    """step -> {name: value} of the scalars a run logged at steps <= `up_to`, read from its
    Sacred metrics.json (a resumed run carries them: `TrainingLoop.carry_curves`); None
    when the file is missing or unreadable."""
    try:
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None
    scalars: Dict[int, Dict[str, float]] = {}
    for name, series in metrics.items():
        for step, value in zip(series.get("steps", []), series.get("values", [])):
            if step <= up_to:
                scalars.setdefault(int(step), {})[name] = float(value)
    return scalars


class TrainingCurves:
    """Collects logged scalars; mirrors them into TensorBoard as they come."""

    def __init__(self, run_dir: str, history: Dict[str, List] = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.run_dir = run_dir
        self.history: Dict[str, List] = history or {}
        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, "tensorboard"))

    def add(self, step: int, scalars: Dict[str, float]) -> None:
        for name, value in scalars.items():
            self.history.setdefault(name, []).append((int(step), float(value)))
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def write_png(self) -> str:
        """Draw progress.png (atomically) and return its path."""
        path = os.path.join(self.run_dir, "progress.png")
        atomic_write_bytes(progress_png(self.history), path)
        return path


def progress_png(history: Dict[str, List]) -> bytes:
    """PNG bytes of three stacked panels against the step: the losses (log scale), the
    learning rate, the total gradient norm (log scale)."""
    import matplotlib
    matplotlib.use("Agg")  # no display on servers
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 9), dpi=100, layout="constrained")
    panels = figure.subplots(3, 1, sharex=True)
    contents = ((loss_keys(history), "loss (mean over the logged window)", True),
                (("lr",), "learning rate", False),
                (("grad_norm",), "total gradient norm", True))
    for axis, (names, label, log_scale) in zip(panels, contents):
        values = [v for name in names for _, v in history.get(name, [])]
        for name in names:
            _plot(axis, history, name)
        # Losses and norms span decades; a log axis needs every value positive (the
        # a loss may be exactly 0, e.g. FAF-Net's alignment loss on an empty query prediction).
        if log_scale and values and min(values) > 0:
            axis.set_yscale("log")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        if len(names) > 1 and values:
            axis.legend(loc="upper right", fontsize="small")
    panels[-1].set_xlabel("training step")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _plot(axis, history: Dict[str, List], name: str) -> None:
    points = history.get(name)
    if points:
        steps, values = zip(*points)
        axis.plot(steps, values, label=name, linewidth=1.2)
