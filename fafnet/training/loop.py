"""The training engine: one run's model, optimiser, schedule, resume, episodes and loop.

`train(config, run_dir, logger)` runs a training run from its (Sacred) config dict; the
command line around it is `fafnet.cli.train`. What a run folder holds is described there and
in docs/protocol.md. An episode depends only on (seed, global step), so a resumed run sees the
episodes the interrupted run would have seen and reaches the same weights. Ctrl-C or SIGTERM
lets the step under way finish, saves it as latest.pth and ends the run with advice that
works (`TrainingLoop.stop_early`); a resumed run links the run folder it continues to its own
and carries that run's curves (`link_continuation`, `TrainingLoop.carry_curves`).
"""
import os
import signal
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from fafnet.episodes.training import TrainDataset
from fafnet.io.atomic import atomic_write_json
from fafnet.io.logs import log_to_file
from fafnet.io.progress import duration_text, progress
from fafnet.models import build_model, model_counters, resolve_model_options
from fafnet.runtime.devices import configure_threads, resolve_device
from fafnet.runtime.options import OPTIMIZERS, milestones, optimizer_choices
from fafnet.runtime.rng import seed_everything
from fafnet.runtime.runs import deferred_interrupts, record_continuation
from fafnet.runtime.resume import load_for_resume, restore_training_state, resume_differences
from fafnet.runtime.snapshots import (NonFiniteWeightsError, SnapshotError, SnapshotWriter, final_path, latest_path,
                                      run_folder_of, saved_training_config)
from fafnet.runtime.training_data import (DATA_MANIFEST_NAME, describe_differences, resume_data_differences,
                                          training_data_record)
from fafnet.training.curves import TrainingCurves, earlier_scalars
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


def train(config: Dict, run_dir: str, logger, log_scalar: Optional[Callable] = None,
          info: Optional[Dict] = None) -> Dict:
    """The training loop; `config` is a run's Sacred config (flat, model_options resolved).
    `info` (Sacred's run.info) gets the device and CPU threads at once. Returns a summary
    dict. Ctrl-C or SIGTERM ends the run with a KeyboardInterrupt whose `advice` says how
    to go on (`TrainingLoop.stop_early`, `stopped_advice`)."""
    device = resolve_device(config["device"])
    threads = configure_threads(config["num_threads"])
    if info is not None:
        info.update({"device": str(device), "num_threads": threads, "num_workers": config["num_workers"]})
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config["cudnn_benchmark"]
    with log_to_file(logger, os.path.join(run_dir, "train.log")):
        logger.info("training %s (%s) on %s fold %d (setting %d%s) on %s (%d CPU threads); run folder %s",
                    config["model"], options_text(config["model_options"]), config["dataset"], config["eval_fold"],
                    config["setting"], f", {config['setting2_protocol']}" if config["setting"] == 2 else "",
                    device, threads, run_dir)
        try:
            loop, dataset, start_step = prepare_run(config, run_dir, device, logger, log_scalar)
            return {**loop.run(dataset, start_step), "num_threads": threads}
        except KeyboardInterrupt as interrupt:
            if not getattr(interrupt, "advice", ""):
                interrupt.advice = stopped_advice(run_dir, config)
                logger.warning("stopped%s", interrupt.advice)
            raise


def prepare_run(config: Dict, run_dir: str, device: torch.device, logger, log_scalar: Optional[Callable]
                ) -> Tuple["TrainingLoop", TrainDataset, int]:
    """The data, model, optimiser and schedule (restored when resuming), the run's
    data_manifest.json and the link from a resumed run's folder: (loop, dataset, start step)."""
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
    earlier_run = None
    if resumed is not None:
        earlier_run = link_continuation(manifest["resume"], run_dir, start_step, logger)
    loop = TrainingLoop(model, optimizer, scheduler, device, config, run_dir, logger, log_scalar,
                        data_record, earlier_run)
    return loop, dataset, start_step


def link_continuation(resume_record: Dict, run_dir: str, start_step: int, logger) -> Optional[str]:
    """Record in the resumed run's folder that it goes on in `run_dir` (its continued.json;
    this run's data_manifest.json names that folder). Returns that folder (None: the snapshot
    lies outside a run folder, or its folder cannot be written)."""
    earlier = resume_record.get("run")
    if earlier is None:
        logger.info("resumed from %s, which is not in a run folder: no run folder to link", resume_record["from"])
        return None
    try:
        path = record_continuation(earlier, run_dir, resume_record["from"], start_step)
    except OSError as err:
        logger.warning("could not record in %s that the run goes on here (%s)", earlier, err)
        return earlier
    logger.info("this run continues %s from step %d (recorded in %s)", earlier, start_step, path)
    return earlier


def stopped_advice(run_dir: str, config: Mapping) -> str:
    """What to do after a run stopped outside `TrainingLoop.stop_early` (before its loop, or
    at once by a second signal): resume from the snapshot it has, or start again."""
    if os.path.isfile(final_path(run_dir)):
        return (f"; its last step is saved in {final_path(run_dir)}: evaluate it, or raise n_steps "
                f"and resume={run_dir}")
    if os.path.isfile(latest_path(run_dir)):
        return (f"; the step under way was not saved: continue the run from its last snapshot "
                f"({latest_path(run_dir)}) with resume={run_dir}")
    if config["resume"]:
        return (f"; this run saved no snapshot, so continue from where it started with "
                f"resume={config['resume']}")
    return ("; no training step was saved (the run stopped before it could save one), so it cannot be "
            "resumed: start it again")


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
        return {"from": path, "run": _abs_or_none(run_folder_of(path)), "checked": False, "differences": [],
                "resume_other_data": config["resume_other_data"]}
    differences = resume_data_differences(saved, data_record)
    if differences and not config["resume_other_data"]:
        raise SnapshotError(
            f"resume={config['resume']!r}: {path} was trained on other data than data_dir="
            f"{config['data_dir']!r} holds: {describe_differences(differences)}. Resume on the data the "
            f"run trained on, or pass resume_other_data=True to continue on these files (recorded)")
    if differences:
        logger.warning("resume_other_data=True: continuing %s on other data: %s", path,
                       describe_differences(differences))
    return {"from": path, "run": _abs_or_none(run_folder_of(path)), "checked": True, "differences": differences,
            "resume_other_data": config["resume_other_data"]}


def _abs_or_none(path: Optional[str]) -> Optional[str]:
    return os.path.abspath(path) if path else None


def options_text(options: Mapping) -> str:
    """A model's options as one line: "icm=True, aff=True, ..." ("no options")."""
    return ", ".join(f"{name}={value!r}" for name, value in options.items()) or "no options"


def build_optimizer(model: torch.nn.Module, config: Dict, device: torch.device = torch.device("cpu")
                    ) -> torch.optim.Optimizer:
    """The release's SGD (lr, momentum, weight_decay), or with optimizer="adam" Adam (lr,
    weight_decay as L2; `momentum` unused). Adam is not in the release: it scales each
    parameter's step by its own gradient history, which a from-scratch start needs because the
    stem's gradients are about 1e3 times the heads' (docs/demo.md). On CUDA the fused
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


def make_loader(dataset, start_step: int, config: Mapping, device: torch.device) -> DataLoader:
    """The episodes of steps start_step + 1 .. n_steps, in order, from `num_workers` processes."""
    return DataLoader(
        dataset, batch_size=None, sampler=range(start_step, config["n_steps"]),
        num_workers=config["num_workers"], pin_memory=device.type == "cuda", worker_init_fn=init_worker,
        # Episodes are pure functions of (seed, step); a private generator keeps the
        # loader from drawing on the global torch RNG.
        generator=torch.Generator().manual_seed(config["seed"]))


def init_worker(worker_id: int) -> None:
    """A data-loading worker process: OpenCV (the augmentation's) on one thread, as torch
    already is there (it would start one per core in every worker, beside the training
    process's threads); Ctrl-C and SIGTERM left to the training process, which finishes its
    step, saves it and stops the workers (a worker killed by either would fail the run)."""
    import cv2
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


class LossWindow:
    """The step losses since the last logged step, and when that window started."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: Dict[str, float] = {}
        self.count, self.started = 0, time.perf_counter()

    def add(self, losses: Mapping[str, float]) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count += 1

    def means(self) -> Dict[str, float]:
        return {name: value / self.count for name, value in self.sums.items()}

    def seconds_per_step(self) -> float:
        return (time.perf_counter() - self.started) / self.count


class TrainingLoop:
    """Optimisation over episodes `start_step .. n_steps - 1` with logging, curves and
    snapshots. Ctrl-C or SIGTERM stops it after the step under way, saved (`stop_early`)."""

    def __init__(self, model, optimizer, scheduler, device: torch.device, config: Dict,
                 run_dir: str, logger, log_scalar: Optional[Callable], training_data: Optional[Dict] = None,
                 earlier_run: Optional[str] = None):
        """`earlier_run`: the run folder this (resumed) run continues; its curves up to the
        resumed step are carried into this run's."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.config = device, config
        self.run_dir, self.logger, self.log_scalar = run_dir, logger, log_scalar
        self.earlier_run = earlier_run
        self.snapshots = SnapshotWriter(run_dir, config, config["image_size"], config["keep_snapshots"],
                                        training_data)
        self.last_snapshot: Optional[str] = None
        self.last_snapshot_step: Optional[int] = None
        self.start_step, self.started, self.window = 0, time.perf_counter(), LossWindow()
        self.step = TrainStep(model, optimizer, scheduler, device=device, grad_clip_norm=config["grad_clip_norm"],
                              amp_bf16=config["amp_bf16"], channels_last=bool(config["channels_last"]),
                              compile=config["compile"], cuda_graph=config["cuda_graph"], log=logger)

    def run(self, dataset: TrainDataset, start_step: int) -> Dict:
        n_steps = self.config["n_steps"]
        loader = make_loader(dataset, start_step, self.config, self.device)
        if start_step == 0 and self.config["save_initial_snapshot"]:
            # The weights training starts from (the demo evaluates them as its untrained model).
            self.logger.info("initial weights: %s", self.snapshots.save_weights(0, self.model))
        self.model.train()
        curves = TrainingCurves(self.run_dir)
        self.carry_curves(curves, start_step)
        self.start_step, self.started, self.window = start_step, time.perf_counter(), LossWindow()
        losses = {}
        # A bar on a terminal; in a log the step lines below say how far training is.
        bar = progress(loader, log=False, total=n_steps, initial=start_step, desc="train", unit="step")
        try:
            with deferred_interrupts() as stop:
                for step, episode in enumerate(bar, start=start_step + 1):
                    losses = self.train_step(episode, step)
                    self.window.add(losses)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", refresh=False)
                    self.after_step(step, losses, curves)
                    if stop.requested and step < n_steps:
                        raise self.stop_early(step, stop, curves)
        finally:
            bar.close()
            curves.close()
        elapsed = time.perf_counter() - self.started
        steps_run = n_steps - start_step
        self.logger.info("finished %d steps in %.1f s (%.3f s/step); final snapshot %s",
                         steps_run, elapsed, elapsed / steps_run, self.last_snapshot)
        counters = model_counters(self.model)
        if counters:
            self.logger.info("the model counted: %s", ", ".join(f"{k} {v}" for k, v in counters.items()))
        return {"final_snapshot": self.last_snapshot, "start_step": start_step, "n_steps": n_steps,
                "seconds_per_step": elapsed / steps_run, "final_losses": losses, "model_counters": counters}

    def after_step(self, step: int, losses: Mapping[str, float], curves: TrainingCurves) -> None:
        """Log (the first step of the run always), draw and save what `step` calls for."""
        n_steps, reported = self.config["n_steps"], step % self.config["print_interval"] == 0
        if step == self.start_step + 1 and not reported and step != n_steps:
            self.log_first_step(step, losses)
        if reported or step == n_steps:
            self.report_window(step, curves)
        if step % self.config["snapshot_interval"] == 0 or step == n_steps:
            self.save_snapshot(step, final=step == n_steps)
            curves.write_png()

    def log_first_step(self, step: int, losses: Mapping[str, float]) -> None:
        """The first step's loss and time, and what that time makes of the run's length (the
        next line comes at the next print_interval, which may be minutes away)."""
        seconds = time.perf_counter() - self.started
        n_steps = self.config["n_steps"]
        self.logger.info("step %d/%d: loss %.4f, %.1f s (the first step, with start-up); at that pace about %s "
                         "for the run's %d steps, %s left; losses every %d steps from here", step, n_steps,
                         losses["loss"], seconds, duration_text(seconds * (n_steps - self.start_step)),
                         n_steps - self.start_step, duration_text(seconds * (n_steps - step)),
                         self.config["print_interval"])

    def report_window(self, step: int, curves: TrainingCurves) -> None:
        left_s = (time.perf_counter() - self.started) / (step - self.start_step) * (self.config["n_steps"] - step)
        self._report(step, self.window.means(), self.window.seconds_per_step(), curves, left_s=left_s)
        self.window.reset()

    def stop_early(self, step: int, stop, curves: TrainingCurves) -> KeyboardInterrupt:
        """After a Ctrl-C or SIGTERM (fafnet.runtime.runs.deferred_interrupts): log the
        losses since the last logged step, save `step` as latest.pth (a full snapshot, as
        resume needs) unless it was just saved, and return the exception that ends the run,
        its `advice` saying how it goes on."""
        if self.window.count:
            self.report_window(step, curves)
        if self.last_snapshot_step != step:
            self.save_snapshot(step, final=False, step_file=False)
        curves.write_png()
        interrupt = stop.interrupt()
        interrupt.advice = (f"; step {step} of {self.config['n_steps']} is saved in {self.last_snapshot}: "
                            f"continue the run with resume={self.run_dir}")
        self.logger.warning("%s: stopped after step %d%s", signal.Signals(stop.signum).name, step, interrupt.advice)
        return interrupt

    def carry_curves(self, curves: TrainingCurves, start_step: int) -> None:
        """A resumed run's curves (progress.png, tensorboard/, metrics.json) start with the
        logged steps up to `start_step` of the run it continues, so they show the whole run."""
        if not start_step:
            return
        earlier = earlier_scalars(self.earlier_run, start_step) if self.earlier_run else None
        if not earlier:
            self.logger.info("the curves of this run start at step %d: the steps before it are not recorded "
                             "beside the resumed snapshot (%s)", start_step + 1, self.config["resume"])
            return
        for step, scalars in sorted(earlier.items()):
            curves.add(step, scalars)
            self._log_scalars(step, scalars)
        self.logger.info("the curves of this run carry %d logged step(s) up to step %d from %s", len(earlier),
                         start_step, self.earlier_run)

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

    def save_snapshot(self, step: int, final: bool, step_file: bool = True) -> str:
        try:
            self.last_snapshot = self.snapshots.save(step, self.model, self.optimizer, self.scheduler, final,
                                                     step_file)
            self.last_snapshot_step = step
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
        self._log_scalars(step, scalars)

    def _log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Into Sacred's metrics.json."""
        if self.log_scalar is not None:
            for name, value in scalars.items():
                self.log_scalar(name, value, step)
