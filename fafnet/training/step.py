"""One training step that waits for the device at most once, and its GPU fast paths.

`TrainStep` performs the release's update for any model of fafnet.models.interface: forward
pass on the episode, the sum of the losses the model returns (for FAF-Net query + alignment +
prototype loss), backward pass, total gradient norm (clipped when asked), optimiser step,
scheduler step, and a stop before an update with a non-finite loss or gradient is applied.
The losses and the gradient norm are read together, once, after the backward pass and before
the optimiser step; the query labels are checked on the host and copied asynchronously, so
nothing else in the step waits for the device (FAF-Net's alignment loss is branchless for the
same reason).

With every option off, on the CPU, it gives bitwise the same weights as the plain
forward / backward / step loop (tests/test_train_step.py).
The options are for GPUs, where one episode per step leaves the device waiting on kernel
launches: bf16 autocast (FFT, probabilities and losses stay float32), channels-last memory
format, `torch.compile` of the encoder or of forward + losses, and a CUDA graph of forward +
backward + gradient norm, replayed every step. An option that cannot work where it runs
(a CUDA graph on the CPU, a compiler that fails) logs a warning and the step runs without it.
"""
import logging
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from fafnet.io.logs import error_summary
from fafnet.models.interface import check_query_labels, image_encoder, total_loss
from fafnet.runtime.options import COMPILE_TARGETS

TOTAL, GRAD_NORM = "loss", "grad_norm"   # the values a step reports besides the model's losses
# Untimed forward + backward passes on a side stream before a CUDA graph is captured: they
# pick cuDNN/cuBLAS algorithms, create FFT plans and workspaces, and run torch.compile.
GRAPH_WARMUP_PASSES = 3

logger = logging.getLogger(__name__)

Inputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss or the gradient norm became NaN or infinite; the update was not applied.

    Attributes:
        what: "loss" (one of the losses) or "gradient" (the total gradient norm).
        values: the losses (and for "gradient" also grad_norm) of the step, as floats.
    A caller that knows more (step number, episode, last snapshot) raises a new one with its
    own `message` and the same `what` and `values`.
    """

    def __init__(self, what: str, values: Mapping[str, float], message: Optional[str] = None):
        self.what, self.values = what, dict(values)
        listed = ", ".join(f"{name}={value}" for name, value in self.values.items())
        super().__init__(message or f"non-finite {what} ({listed}); training stopped without applying this update")


def optimizer_implementation(device: torch.device) -> Dict[str, bool]:
    """Keyword arguments for torch.optim.SGD / Adam that pick their fastest implementation on
    `device`: fused=True on CUDA (a few multi-tensor kernels per step instead of a dozen
    launches per parameter group), nothing elsewhere, so the CPU keeps its default
    implementation and its exact results."""
    return {"fused": True} if torch.device(device).type == "cuda" else {}


def _buffer_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


@torch.no_grad()
def _restore_buffers(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    for name, buffer in model.named_buffers():
        buffer.copy_(state[name])


class _CapturedStep:
    """A CUDA graph of forward + backward + gradient norm with its static inputs and output."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", inputs: Sequence[torch.Tensor], stats: torch.Tensor):
        self.graph, self.inputs, self.stats = graph, list(inputs), stats

    def accepts(self, inputs: Sequence[torch.Tensor]) -> bool:
        return all(new.shape == old.shape and new.dtype == old.dtype for new, old in zip(inputs, self.inputs))

    def run(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, new in zip(self.inputs, inputs):
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        return self.stats


class TrainStep:
    """The training update on one episode; call it once per step.

    Args:
        model: a model of fafnet.models.interface in training mode (the step does not change
            the mode).
        optimizer, scheduler: stepped after each good update (scheduler may be None).
        device: where the model is (default: its first parameter's device).
        grad_clip_norm: clip the total gradient norm to this; None: no clipping (the release).
        amp_bf16: bfloat16 autocast for the forward pass (the model keeps the FFT and the
            probabilities in float32; the losses are float32).
        channels_last: channels-last weights (converted here) and input images.
        compile: None, "encoder" (torch.compile of the forward of the model's
            `image_encoder()`; the module tree and the state dict keys do not change) or
            "model" (forward + losses as one compiled
            function). Compiled at the first step; if that fails, a warning is logged and the
            step runs without it.
        cuda_graph: on CUDA, capture forward + backward + gradient norm once (at the first
            step, after GRAPH_WARMUP_PASSES untimed passes whose BatchNorm updates are undone)
            and replay it every step; the optimiser and scheduler run outside the graph so the
            learning rate may change. Every episode must then have the shapes of the first
            (others run without the graph). BatchNorm running statistics update on every replay.
            On other devices a warning is logged and the step runs without a graph.
        log: logger for those warnings (default: this module's).

    Calling it with an episode dict ("support_images" [K,3,H,W], "support_masks" [K,H,W],
    "query_images" [Q,3,H,W], "query_labels" [Q,H,W] integers in {0, 1}; CPU tensors, pinned
    for asynchronous copies) returns {name: float}: "loss" (the total), each of the model's
    losses by its name, "grad_norm"; or raises NonFiniteLossError before the optimiser step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None, *,
                 device: Optional[torch.device] = None, grad_clip_norm: Optional[float] = None,
                 amp_bf16: bool = False, channels_last: bool = False, compile: Optional[str] = None,
                 cuda_graph: bool = False, log: Optional[logging.Logger] = None):
        if compile not in COMPILE_TARGETS:
            raise ValueError(f"compile must be one of {COMPILE_TARGETS}, got {compile!r}")
        if grad_clip_norm is not None and not (isinstance(grad_clip_norm, (int, float)) and grad_clip_norm > 0):
            raise ValueError(f"grad_clip_norm must be None or a number > 0, got {grad_clip_norm!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.max_norm = float(grad_clip_norm) if grad_clip_norm is not None else float("inf")
        self.amp_bf16, self.channels_last = bool(amp_bf16), bool(channels_last)
        self.log = log or logger
        self.parameters: List[nn.Parameter] = list(model.parameters())
        # The names of the values `_forward_backward` stacks, known after its first call.
        self.value_names: List[str] = []
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            self._match_optimizer_state_layout()
        self.use_graph = bool(cuda_graph) and self.device.type == "cuda"
        if cuda_graph and not self.use_graph:
            self.log.warning("cuda_graph needs a CUDA device; on %s the training step runs without one",
                             self.device)
        self._captured: Optional[_CapturedStep] = None
        self._losses: Callable[..., Dict[str, torch.Tensor]] = self._eager_losses
        self.compile_target: Optional[str] = None
        if compile is not None:
            self._enable_compile(compile)
        # A compiled function compiles (and may fail) at its first call: that one is guarded.
        self._compile_verified = self.compile_target is None

    # -- public ------------------------------------------------------------------------------
    def __call__(self, episode: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        host = self._host_inputs(episode)
        if self.use_graph:
            stats = self._graph_pass(host)
        else:
            self._zero_grads()
            stats = self._guarded_pass(self._device_inputs(host))
        values = dict(zip(self.value_names, stats.tolist()))   # the step's one wait for the device
        self._check_finite(values)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return values

    @property
    def graph_captured(self) -> bool:
        """Whether steps replay a CUDA graph."""
        return self._captured is not None and self.use_graph

    @torch.no_grad()
    def _match_optimizer_state_layout(self) -> None:
        """Momentum/moment buffers restored from a contiguous snapshot take their parameter's
        channels-last layout: multi-tensor (fused, foreach) kernels want equal layouts."""
        for parameter in self.parameters:
            state = self.optimizer.state.get(parameter, {})
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == parameter.shape and value.dim() == 4:
                    state[name] = value.contiguous(memory_format=torch.channels_last)

    # -- inputs ------------------------------------------------------------------------------
    def _host_inputs(self, episode: Mapping[str, torch.Tensor]) -> Inputs:
        labels = episode["query_labels"]
        check_query_labels(labels)   # on the host: the device check would wait for the device
        return episode["support_images"], episode["support_masks"], episode["query_images"], labels

    def _device_inputs(self, host: Inputs) -> Inputs:
        support, masks, query, labels = (x.to(self.device, non_blocking=True) for x in host)
        if self.channels_last:
            support, query = (x.contiguous(memory_format=torch.channels_last) for x in (support, query))
        return support, masks, query, labels

    # -- the computation ---------------------------------------------------------------------
    def _eager_losses(self, support: torch.Tensor, masks: torch.Tensor, query: torch.Tensor,
                      labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"loss": the total, then the model's losses}, float32 scalars."""
        # Inside a CUDA graph the autocast weight cache must stay off: a cast cached before
        # the capture would be freed while the graph still reads it.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp_bf16,
                            cache_enabled=False if self.use_graph else None):
            _, losses = self.model(support, masks, query, labels)
        if TOTAL in losses or GRAD_NORM in losses:
            raise ValueError(f"a model's losses may not be named {TOTAL!r} or {GRAD_NORM!r}: the step "
                             f"reports those itself (got {list(losses)})")
        losses = {name: value.float() for name, value in losses.items()}
        return {TOTAL: total_loss(losses), **losses}

    def _forward_backward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Forward, backward, gradient norm (and clipping); returns the values named by
        `value_names` as a float64 vector on the device (float64 holds float32 exactly)."""
        losses = self._losses(*inputs)
        losses[TOTAL].backward()
        # With max_norm = inf the gradients are multiplied by exactly 1 (the release's behaviour).
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.max_norm)
        self.value_names = [*losses, GRAD_NORM]
        return torch.stack([value.detach().to(torch.float64) for value in (*losses.values(), grad_norm)])

    def _guarded_pass(self, inputs: Inputs) -> torch.Tensor:
        """_forward_backward; the first call of a compiled version falls back to eager on failure."""
        if self._compile_verified:
            return self._forward_backward(*inputs)
        saved = _buffer_state(self.model)
        try:
            stats = self._forward_backward(*inputs)
        except Exception as error:  # torch.compile raises many types (backend, inductor, ...)
            self.log.warning("torch.compile of the %s failed (%s); training continues without it",
                             self.compile_target, error_summary(error))
            self._disable_compile()
            _restore_buffers(self.model, saved)
            self._zero_grads()
            stats = self._forward_backward(*inputs)
        self._compile_verified = True
        return stats

    def _check_finite(self, values: Dict[str, float]) -> None:
        losses = {name: value for name, value in values.items() if name != GRAD_NORM}
        if not all(math.isfinite(value) for value in losses.values()):
            raise NonFiniteLossError("loss", losses)
        if not math.isfinite(values[GRAD_NORM]):
            raise NonFiniteLossError("gradient", values)

    def _zero_grads(self) -> None:
        if self._captured is None:
            self.optimizer.zero_grad(set_to_none=True)
            return
        # A captured graph writes into the gradient tensors it allocated: keep them.
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad.zero_()

    # -- torch.compile -----------------------------------------------------------------------
    def _enable_compile(self, target: str) -> None:
        try:
            if target == "encoder":
                encoder = image_encoder(self.model)
                if encoder is None:
                    raise TypeError(f"{type(self.model).__name__} declares no image_encoder()")
                # An instance attribute: the module tree and state dict keys stay as they are.
                encoder.forward = torch.compile(encoder.forward, dynamic=False)
            else:
                self._losses = torch.compile(self._eager_losses, dynamic=False)
        except Exception as error:  # e.g. no compiler support for this Python or platform
            self.log.warning("torch.compile is unavailable (%s: %s); training continues without it",
                             type(error).__name__, error)
            return
        self.compile_target = target

    def _disable_compile(self) -> None:
        encoder = image_encoder(self.model)
        if encoder is not None and "forward" in vars(encoder):
            del encoder.forward
        self._losses = self._eager_losses
        self.compile_target = None

    # -- CUDA graph --------------------------------------------------------------------------
    def _graph_pass(self, host: Inputs) -> torch.Tensor:
        if self._captured is None:
            self._captured = self._capture(self._device_inputs(host))
            if self._captured is None:   # capture failed: a warning was logged
                self.use_graph = False
                self._zero_grads()
                return self._guarded_pass(self._device_inputs(host))
        if not self._captured.accepts(host):
            self._zero_grads()
            return self._forward_backward(*self._device_inputs(host))
        # Straight from the (pinned) host tensors into the graph's inputs, in their layout.
        return self._captured.run(host)

    def _capture(self, inputs: Inputs) -> Optional[_CapturedStep]:
        saved = _buffer_state(self.model)
        static = [x.clone() for x in inputs]   # keeps the memory format
        current = torch.cuda.current_stream(self.device)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_PASSES):
                    self.optimizer.zero_grad(set_to_none=True)
                    self._guarded_pass(static)
            current.wait_stream(side)
            # Gradients set to None: the captured backward allocates them in the graph's
            # memory and every replay overwrites them (no accumulation, no zeroing needed).
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may allocate during the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                stats = self._forward_backward(*static)
        except Exception as error:
            self.log.warning("capturing the training step in a CUDA graph failed (%s); "
                             "training continues without it", error_summary(error))
            torch.cuda.synchronize(self.device)
            return None
        finally:
            # The warm-up passes updated the BatchNorm statistics; the first real step must
            # start from the same state as without a graph.
            _restore_buffers(self.model, saved)
        return _CapturedStep(graph, static, stats)
