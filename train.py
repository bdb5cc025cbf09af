"""Episodic training of FAF-Net (SPEC sections 7 to 9) as a Sacred experiment.

    python train.py with SYNTHETIC eval_fold=0 n_steps=600 snapshot_interval=200 device=cpu
    python train.py with SYNTHETIC eval_fold=0 n_steps=600 resume=runs/train/3   # continue
    python train.py print_config with SABS                                       # options

Every run is recorded in <runs_dir>/train/<id>/ (Sacred's config.json, run.json,
metrics.json, cout.txt) together with train.log and snapshots/step_XXXXXXX.pth, written
every `snapshot_interval` steps and at the end. A snapshot holds the model, optimiser,
scheduler, step and RNG states; since an episode depends only on (seed, global step), a
resumed run continues with exactly the episodes the interrupted run would have seen and
reaches the same weights.
"""
import json
import math
import time
from collections import Counter
from typing import Callable, Dict, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from config import Settings, build_experiment, observer_run_dir, resolve_settings
from dataloaders.datasets import TrainDataset
from models import query_loss
from utils import (atomic_torch_save, autocast, build_model, capture_rng_state, list_snapshots,
                   log_to_file, resolve_checkpoint, resolve_device, restore_rng_state, seed_everything,
                   snapshot_path, to_device_images)

SNAPSHOT_FORMAT = "fafnet-snapshot-v1"
LOSS_NAMES = ("loss", "query_loss", "align_loss", "proto_loss", "grad_norm")
# Options that shape the training trajectory: a resumed run must agree on all of them.
TRAJECTORY_OPTIONS = ("dataset", "eval_fold", "setting", "exclude_rule", "use_gt", "n_shot",
                      "min_size", "augment", "max_iters_per_load", "n_volumes", "seed", "lr",
                      "momentum", "weight_decay", "lr_gamma", "grad_clip_norm", "optimizer", "amp_bf16")

OPTIONS_ADDED_LATER = {"optimizer": "sgd"}

ex = build_experiment("FAFNet-train", "train", doc=__doc__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; training stopped before applying that update."""


@ex.main
def main(_config, _run, _log):
    run_dir = observer_run_dir(_run)
    if run_dir is None:
        raise RuntimeError("train.py needs a run folder for its snapshots; do not run it unobserved")
    summary = train(_config, run_dir, _log, log_scalar=_run.log_scalar)
    _run.info.update(summary)
    return summary["final_snapshot"]


def train(config: Dict, run_dir: str, logger, log_scalar: Optional[Callable] = None) -> Dict:
    """The training loop; `config` is a run's Sacred config. Returns a summary dict."""
    settings = resolve_settings(config)
    device = resolve_device(config["device"])
    with log_to_file(logger, f"{run_dir}/train.log"):
        logger.info("training %s fold %d (setting %d) on %s; run folder %s", settings.spec.name,
                    config["eval_fold"], config["setting"], device, run_dir)
        seed_everything(config["seed"])
        model = build_model(settings.image_size, device, config["pretrained_weights"],
                            config["channels_last"])
        if config["pretrained_weights"]:
            logger.info("loaded %d pretrained backbone tensors from %s",
                        model.encoder.pretrained_tensors_loaded, config["pretrained_weights"])
        optimizer = build_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(settings.lr_milestones), gamma=config["lr_gamma"])
        start_step = 0
        if config["resume"]:
            start_step = load_snapshot(config["resume"], config, settings, model, optimizer, scheduler, logger)
        if start_step >= config["n_steps"]:
            raise ValueError(f"resume: the snapshot is at step {start_step}, not before "
                             f"n_steps={config['n_steps']}; raise n_steps to train further")
        dataset = make_train_dataset(config, settings)
        loop = TrainingLoop(model, optimizer, scheduler, device, config, settings, run_dir, logger, log_scalar)
        return loop.run(dataset, start_step)


def build_optimizer(model: torch.nn.Module, config: Dict) -> torch.optim.Optimizer:
    """The release's SGD (lr, momentum, weight_decay), or with optimizer="adam" Adam (lr,
    weight_decay as L2; `momentum` unused). Adam is not in the release: it scales each
    parameter's step by its own gradient history, which a from-scratch start needs because the
    stem's gradients are about 1e3 times the heads' (see script/demo.sh)."""
    name = config.get("optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    raise ValueError(f"config option optimizer={name!r} must be 'sgd' (release) or 'adam'")


def make_train_dataset(config: Dict, settings: Settings) -> TrainDataset:
    return TrainDataset(
        settings.data_dir, dataset=settings.spec.name, eval_fold=config["eval_fold"],
        n_shot=config["n_shot"], use_gt=config["use_gt"], setting=config["setting"],
        exclude_rule=config["exclude_rule"], test_classes=list(settings.test_classes),
        min_size=config["min_size"], supervoxel_min_size=settings.supervoxel_min_size,
        augment=config["augment"], seed=config["seed"],
        max_iters_per_load=config["max_iters_per_load"], n_volumes=config["n_volumes"],
        image_size=settings.image_size)


class TrainingLoop:
    """SGD over episodes `start_step .. n_steps - 1` with logging and snapshots."""

    def __init__(self, model, optimizer, scheduler, device: torch.device, config: Dict,
                 settings: Settings, run_dir: str, logger, log_scalar: Optional[Callable]):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device, self.config, self.settings = device, config, settings
        self.run_dir, self.logger, self.log_scalar = run_dir, logger, log_scalar
        self.last_snapshot: Optional[str] = None

    def run(self, dataset: TrainDataset, start_step: int) -> Dict:
        n_steps = self.config["n_steps"]
        loader = DataLoader(
            dataset, batch_size=None, sampler=range(start_step, n_steps),
            num_workers=self.config["num_workers"], pin_memory=self.device.type == "cuda",
            # Episodes are pure functions of (seed, step); a private generator keeps the
            # loader from drawing on the global torch RNG.
            generator=torch.Generator().manual_seed(self.config["seed"]))
        self.model.train()
        sums, window = dict.fromkeys(LOSS_NAMES, 0.0), 0
        window_start, started = time.perf_counter(), time.perf_counter()
        losses = {}
        progress = tqdm(loader, total=n_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True, mininterval=1.0)
        for step, episode in enumerate(progress, start=start_step + 1):
            losses = self.train_step(episode, step)
            for name in LOSS_NAMES:
                sums[name] += losses[name]
            window += 1
            progress.set_postfix(loss=f"{losses['loss']:.4f}", refresh=False)
            if step % self.config["print_interval"] == 0 or step == n_steps:
                self._report(step, {k: v / window for k, v in sums.items()},
                             (time.perf_counter() - window_start) / window)
                sums, window = dict.fromkeys(LOSS_NAMES, 0.0), 0
                window_start = time.perf_counter()
            if step % self.config["snapshot_interval"] == 0 or step == n_steps:
                self.save_snapshot(step)
        progress.close()
        elapsed = time.perf_counter() - started
        steps_run = n_steps - start_step
        self.logger.info("finished %d steps in %.1f s (%.3f s/step); final snapshot %s",
                         steps_run, elapsed, elapsed / steps_run, self.last_snapshot)
        return {"final_snapshot": self.last_snapshot, "start_step": start_step, "n_steps": n_steps,
                "seconds_per_step": elapsed / steps_run, "final_losses": losses}

    def train_step(self, episode: Dict, step: int) -> Dict[str, float]:
        """One SGD update on one episode; raises NonFiniteLossError before applying a bad one."""
        channels_last = self.config["channels_last"]
        support_images = to_device_images(episode["support_images"], self.device, channels_last)
        query_images = to_device_images(episode["query_images"], self.device, channels_last)
        support_masks = episode["support_masks"].to(self.device)
        query_labels = episode["query_labels"].to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config["amp_bf16"]):
            probs, align_loss, proto_loss = self.model(support_images, support_masks, query_images, train=True)
        q_loss = query_loss(probs.float(), query_labels)
        loss = q_loss + align_loss.float() + proto_loss.float()
        values = {"loss": loss.item(), "query_loss": q_loss.item(),
                  "align_loss": align_loss.item(), "proto_loss": proto_loss.item()}
        self._stop_if_not_finite(values, episode, step, "loss")
        loss.backward()
        # The total gradient norm is logged always; with grad_clip_norm it is also clipped
        # (the release does not clip: grad_clip_norm=None keeps its behaviour).
        max_norm = self.config["grad_clip_norm"] or float("inf")
        values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        self._stop_if_not_finite(values, episode, step, "gradient")
        self.optimizer.step()
        self.scheduler.step()
        return values

    def _stop_if_not_finite(self, values: Dict[str, float], episode: Dict, step: int, what: str) -> None:
        if all(math.isfinite(v) for v in values.values()):
            return
        raise NonFiniteLossError(
            f"non-finite {what} at step {step} ({', '.join(f'{k}={v}' for k, v in values.items())}) "
            f"on episode class {episode.get('class_id')} of volume {episode.get('volume_index')}; "
            f"training stopped without applying this update. Last good snapshot: "
            f"{self.last_snapshot or self._previous_snapshot() or 'none written yet'}")

    def save_snapshot(self, step: int) -> str:
        path = snapshot_path(self.run_dir, step)
        scheduler_state = self.scheduler.state_dict()
        # A Counter does not pass torch.load(weights_only=True); a plain dict does.
        scheduler_state["milestones"] = dict(scheduler_state["milestones"])
        atomic_torch_save({
            "format": SNAPSHOT_FORMAT, "step": step, "image_size": list(self.settings.image_size),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler_state, "rng": capture_rng_state(),
            # Sacred's read-only containers do not pass weights_only loading; plain JSON does.
            "config": json.loads(json.dumps(self.config)),
        }, path)
        self.last_snapshot = path
        self.logger.info("step %d: snapshot %s", step, path)
        return path

    def _report(self, step: int, means: Dict[str, float], seconds_per_step: float) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        self.logger.info("step %d: loss %.4f (query %.4f, align %.4f, proto %.4f), grad norm %.3g, "
                         "lr %.3g, %.3f s/step", step, means["loss"], means["query_loss"],
                         means["align_loss"], means["proto_loss"], means["grad_norm"], lr, seconds_per_step)
        if self.log_scalar is not None:
            for name, value in means.items():
                self.log_scalar(name, value, step)
            self.log_scalar("lr", lr, step)
            self.log_scalar("seconds_per_step", seconds_per_step, step)

    def _previous_snapshot(self) -> Optional[str]:
        snapshots = list_snapshots(self.run_dir)
        return snapshots[-1][1] if snapshots else None


def load_snapshot(resume: str, config: Dict, settings: Settings, model, optimizer, scheduler, logger) -> int:
    """Restore model, optimiser, scheduler and RNG states from a snapshot (or a training run
    folder's latest one); returns the step it was taken at."""
    path = resolve_checkpoint(resume)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"resume={resume!r}: {path} is not a training snapshot of this project")
    saved = state["config"]
    # Snapshots written before an option existed trained with its default.
    saved = {**OPTIONS_ADDED_LATER, **saved}
    different = [f"{k}: snapshot {saved.get(k)!r} vs now {config[k]!r}" for k in TRAJECTORY_OPTIONS
                 if saved.get(k) != config[k]]
    if list(state["image_size"]) != list(settings.image_size):
        different.append(f"image_size: snapshot {state['image_size']} vs now {list(settings.image_size)}")
    if different:
        raise ValueError(f"resume={resume!r}: the snapshot was trained with other options, so "
                         f"resuming would not continue that run: {'; '.join(different)}")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    # The milestones follow this run's config (n_steps may have been raised to continue).
    scheduler.milestones = Counter(settings.lr_milestones)
    restore_rng_state(state["rng"])
    logger.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"])


if __name__ == "__main__":
    ex.run_commandline()
