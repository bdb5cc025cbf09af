"""The training engine: one run's model, optimiser, schedule, resume, episodes and loop.

`train(config, run_dir, logger)` runs a training run from its (Sacred) config dict; the
command line around it is `fafnet.cli.train`. What a run folder holds is described there and
in docs/protocol.md. An episode depends only on (seed, global step), so a resumed run sees the
episodes the interrupted run would have seen and reaches the same weights.
"""
import os
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from fafnet.episodes.datasets import TrainDataset
from fafnet.io.atomic import atomic_write_json
from fafnet.io.logs import log_to_file
from fafnet.io.progress import duration_text, progress
from fafnet.models import build_model, resolve_model_options
from fafnet.runtime.devices import configure_threads, resolve_device
from fafnet.runtime.options import OPTIMIZERS, milestones, optimizer_choices
from fafnet.runtime.rng import seed_everything
from fafnet.runtime.snapshots import (NonFiniteWeightsError, SnapshotError, SnapshotWriter, load_for_resume,
                                      restore_training_state, resume_differences, saved_training_config)
from fafnet.runtime.training_data import (DATA_MANIFEST_NAME, describe_differences, resume_data_differences,
                                          training_data_record)
from fafnet.training.curves import TrainingCurves
from fafnet.training.step import NonFiniteLossError, TrainStep, optimizer_implementation

# Options that may differ between a snapshot and the run resuming it; every other option
# shapes the trajectory and must agree (a new option is checked by default).
FREE_ON_RESUME = frozenset({
    "resume", "n_steps", "snapshot_interval", "keep_snapshots", "print_interval", "device",
    "num_workers", "num_threads", "runs_dir", "data_root", "data_dir", "lr_milestones", "channels_last",
    "cudnn_benchmark", "cuda_graph", "compile", "resume_other_data", "folds",
    # Resumed weights come from the snapshot, whatever pretrained file started the run.
    "pretrained_weights", "pretrained_allow_partial",
    # The evaluation's options (test.py's, in the same config).
    "checkpoint", "supp_idx", "n_part", "save_predictions", "save_figures", "allow_leakage",
    "eval_batch_size", "eval_graphs"})


def train(config: Dict, run_dir: str, logger, log_scalar: Optional[Callable] = None) -> Dict:
    """The training loop; `config` is a run's Sacred config (flat, model_options resolved).
    Returns a summary dict."""
    device = resolve_device(config["device"])
    threads = configure_threads(config["num_threads"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config["cudnn_benchmark"]
    with log_to_file(logger, os.path.join(run_dir, "train.log")):
        logger.info("training %s (%s) on %s fold %d (setting %d%s) on %s (%d CPU threads); run folder %s",
                    config["model"], options_text(config["model_options"]), config["dataset"], config["eval_fold"],
                    config["setting"], f", {config['setting2_protocol']}" if config["setting"] == 2 else "",
                    device, threads, run_dir)
        # The data first: a wrong folder or image size fails before a model is built.
        dataset = make_train_dataset(config)
        seed_everything(config["seed"])
        model = build_model(config["model"], config["image_size"], device=device,
                            pretrained_weights=config["pretrained_weights"],
                            allow_partial_pretrained=config["pretrained_allow_partial"],
                            options=config["model_options"])
        if getattr(model, "pretrained_tensors_loaded", 0):
            logger.info("loaded %d pretrained backbone tensors from %s",
                        model.pretrained_tensors_loaded, config["pretrained_weights"])
        optimizer = build_optimizer(model, config, device)
        scheduler = build_scheduler(optimizer, milestones(config), config["lr_gamma"])
        start_step, resumed = 0, None
        if config["resume"]:
            start_step, resumed = resume_from(config, model, optimizer, scheduler, logger)
        if start_step >= config["n_steps"]:
            raise ValueError(f"resume: the snapshot is at step {start_step}, not before "
                             f"n_steps={config['n_steps']}; raise n_steps to train further")
        data_record = training_data_record(dataset, config["dataset"], config["data_dir"])
        manifest = dict(data_record)
        if resumed is not None:
            manifest["resume"] = check_resumed_data(config, resumed, data_record, logger)
        atomic_write_json(manifest, os.path.join(run_dir, DATA_MANIFEST_NAME))
        loop = TrainingLoop(model, optimizer, scheduler, device, config, run_dir, logger, log_scalar,
                            data_record)
        return loop.run(dataset, start_step)


def resume_from(config: Dict, model, optimizer, scheduler, logger) -> Tuple[int, Dict]:
    """Restore a snapshot's states after checking it was trained with this run's options.
    Returns (step, {"path", "training_data": the snapshot's record or None})."""
    path, state = load_for_resume(config["resume"])
    saved = saved_training_config(path, state, "resume")
    saved["model_options"] = resolve_model_options(saved["model"], saved["model_options"])
    different = resume_differences(saved, config, FREE_ON_RESUME)
    if different:
        raise SnapshotError(f"resume={config['resume']!r}: {path} was trained with other options, so "
                            f"resuming would not continue that run: {'; '.join(different)}")
    step = restore_training_state(state, model, optimizer, scheduler, milestones(config))
    logger.info("resumed from %s at step %d", path, step)
    return step, {"path": path, "training_data": state.get("training_data")}


def check_resumed_data(config: Dict, resumed: Dict, data_record: Dict, logger) -> Dict:
    """The resumed snapshot must have trained on the files this run reads (names and
    sha256); resume_other_data=True continues on other files with a warning. Returns what
    the run's data_manifest.json records about the check."""
    saved, path = resumed["training_data"], resumed["path"]
    if saved is None:
        logger.warning("resume: %s records no training data (an older snapshot), so whether this "
                       "run reads the same files cannot be checked", path)
        return {"from": path, "checked": False, "differences": [], "resume_other_data": config["resume_other_data"]}
    differences = resume_data_differences(saved, data_record)
    if differences and not config["resume_other_data"]:
        raise SnapshotError(
            f"resume={config['resume']!r}: {path} was trained on other data than data_dir="
            f"{config['data_dir']!r} holds: {describe_differences(differences)}. Resume on the data the "
            f"run trained on, or pass resume_other_data=True to continue on these files (recorded)")
    if differences:
        logger.warning("resume_other_data=True: continuing %s on other data: %s", path,
                       describe_differences(differences))
    return {"from": path, "checked": True, "differences": differences,
            "resume_other_data": config["resume_other_data"]}


def options_text(options: Mapping) -> str:
    """A model's options as one line: "icm=True, aff=True, ..." ("no options")."""
    return ", ".join(f"{name}={value!r}" for name, value in options.items()) or "no options"


def build_optimizer(model: torch.nn.Module, config: Dict, device: torch.device = torch.device("cpu")
                    ) -> torch.optim.Optimizer:
    """The release's SGD (lr, momentum, weight_decay), or with optimizer="adam" Adam (lr,
    weight_decay as L2; `momentum` unused). Adam is not in the release: it scales each
    parameter's step by its own gradient history, which a from-scratch start needs because the
    stem's gradients are about 1e3 times the heads' (see the README). On CUDA the fused
    implementation (a few kernels per step instead of several per parameter)."""
    name = config["optimizer"]
    fastest = optimizer_implementation(device)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"], **fastest)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"],
                                **fastest)
    raise ValueError(f"config option optimizer={name!r} must be {optimizer_choices()}")


def build_scheduler(optimizer: torch.optim.Optimizer, milestones, gamma: float):
    """The release's schedule: lr *= gamma at each milestone, the scheduler stepping once per
    training step (milestones 3000, 6000, ..., 39000 for 42000 steps)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def make_train_dataset(config: Mapping) -> TrainDataset:
    """The fold's training episodes, from the run's options."""
    return TrainDataset(
        config["data_dir"], dataset=config["dataset"], eval_fold=config["eval_fold"], n_shot=config["n_shot"],
        use_gt=config["use_gt"], setting=config["setting"], setting2_protocol=config["setting2_protocol"],
        group=config["group"], test_classes=config["test_classes"], min_size=config["min_size"],
        supervoxel_min_size=config["supervoxel_min_size"], augment=config["augment"], seed=config["seed"],
        max_iters_per_load=config["max_iters_per_load"], n_volumes=config["n_volumes"],
        image_size=config["image_size"], resample_in_plane=config["resample_in_plane"],
        pseudo_labels=config["pseudo_labels"], superpixel_min_size=config["superpixel_min_size"])


class TrainingLoop:
    """Optimisation over episodes `start_step .. n_steps - 1` with logging, curves and snapshots."""

    def __init__(self, model, optimizer, scheduler, device: torch.device, config: Dict,
                 run_dir: str, logger, log_scalar: Optional[Callable], training_data: Optional[Dict] = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.config = device, config
        self.run_dir, self.logger, self.log_scalar = run_dir, logger, log_scalar
        self.snapshots = SnapshotWriter(run_dir, config, config["image_size"], config["keep_snapshots"],
                                        training_data)
        self.last_snapshot: Optional[str] = None
        self.step = TrainStep(model, optimizer, scheduler, device=device, grad_clip_norm=config["grad_clip_norm"],
                              amp_bf16=config["amp_bf16"], channels_last=bool(config["channels_last"]),
                              compile=config["compile"], cuda_graph=config["cuda_graph"], log=logger)

    def run(self, dataset: TrainDataset, start_step: int) -> Dict:
        n_steps = self.config["n_steps"]
        loader = DataLoader(
            dataset, batch_size=None, sampler=range(start_step, n_steps),
            num_workers=self.config["num_workers"], pin_memory=self.device.type == "cuda",
            # Episodes are pure functions of (seed, step); a private generator keeps the
            # loader from drawing on the global torch RNG.
            generator=torch.Generator().manual_seed(self.config["seed"]))
        if start_step == 0 and self.config["save_initial_snapshot"]:
            # The weights training starts from (the demo evaluates them as its untrained model).
            self.logger.info("initial weights: %s", self.snapshots.save_weights(0, self.model))
        self.model.train()
        curves = TrainingCurves(self.run_dir)
        sums, window = {}, 0
        window_start = started = time.perf_counter()
        losses = {}
        # A bar on a terminal; in a log the step lines below say how far training is.
        bar = progress(loader, log=False, total=n_steps, initial=start_step, desc="train", unit="step")
        try:
            for step, episode in enumerate(bar, start=start_step + 1):
                losses = self.train_step(episode, step)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value
                window += 1
                bar.set_postfix(loss=f"{losses['loss']:.4f}", refresh=False)
                if step % self.config["print_interval"] == 0 or step == n_steps:
                    means = {k: v / window for k, v in sums.items()}
                    self._report(step, means, (time.perf_counter() - window_start) / window, curves,
                                 left_s=(time.perf_counter() - started) / (step - start_step) * (n_steps - step))
                    sums, window = {}, 0
                    window_start = time.perf_counter()
                if step % self.config["snapshot_interval"] == 0 or step == n_steps:
                    self.save_snapshot(step, final=step == n_steps)
                    curves.write_png()
        finally:
            bar.close()
            curves.close()
        elapsed = time.perf_counter() - started
        steps_run = n_steps - start_step
        self.logger.info("finished %d steps in %.1f s (%.3f s/step); final snapshot %s",
                         steps_run, elapsed, elapsed / steps_run, self.last_snapshot)
        return {"final_snapshot": self.last_snapshot, "start_step": start_step, "n_steps": n_steps,
                "seconds_per_step": elapsed / steps_run, "final_losses": losses}

    def train_step(self, episode: Dict, step: int) -> Dict[str, float]:
        """One update on one episode (fafnet/training/step.py); a non-finite loss or gradient
        stops the run before that update is applied, naming the step, the episode and the
        last good snapshot."""
        try:
            return self.step(episode)
        except NonFiniteLossError as error:
            listed = ", ".join(f"{k}={v}" for k, v in error.values.items())
            raise NonFiniteLossError(error.what, error.values, message=(
                f"non-finite {error.what} at step {step} ({listed}) on episode class "
                f"{episode.get('class_id')} of volume {episode.get('volume_index')}; training stopped "
                f"without applying this update. Last good snapshot: {self.last_snapshot or 'none written yet'}"
            )) from None

    def save_snapshot(self, step: int, final: bool) -> str:
        try:
            self.last_snapshot = self.snapshots.save(step, self.model, self.optimizer, self.scheduler, final)
        except NonFiniteWeightsError as error:
            # Losses can stay finite (clamped probabilities) while weights are not.
            raise NonFiniteWeightsError(f"{error}; training stopped. Last good snapshot: "
                                        f"{self.last_snapshot or 'none written yet'}") from None
        self.logger.info("step %d: snapshot %s", step, self.last_snapshot)
        return self.last_snapshot

    def _report(self, step: int, means: Dict[str, float], seconds_per_step: float,
                curves: TrainingCurves, left_s: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        parts = ", ".join(f"{name[:-len('_loss')] if name.endswith('_loss') else name} {value:.4f}"
                          for name, value in means.items() if name not in ("loss", "grad_norm"))
        self.logger.info("step %d/%d: loss %.4f (%s), grad norm %.3g, lr %.3g, %.3f s/step, about %s left",
                         step, self.config["n_steps"], means["loss"], parts, means["grad_norm"], lr,
                         seconds_per_step, duration_text(left_s))
        scalars = {**means, "lr": lr, "seconds_per_step": seconds_per_step}
        curves.add(step, scalars)
        if self.log_scalar is not None:
            for name, value in scalars.items():
                self.log_scalar(name, value, step)
