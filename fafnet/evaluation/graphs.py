"""CUDA graphs for evaluation with a model's `predict` (fafnet.models.interface).

With one support slice and a few query slices per `predict` call (the EP1 protocol splits each
query volume into 3 chunks), the GPU spends much of its time waiting for kernel launches: about
300 per ResNet encoder pass and 100 for the ICM and the segmentation. A CUDA graph replays a
captured sequence of kernels with one launch. Graphs are captured per input signature (shapes,
strides, dtype, autocast state), once, at first use; their results equal the eager ones up to
the cuDNN algorithm choice.

- `GraphedPredict(model)`: the whole `predict` call (support encoding, query encoding, ICM,
  segmentation) as one graph per signature: `foreground = graphed(support, masks, queries)`.
- `GraphedEncoder(model.image_encoder())`: only the encoder, installed in a `with` block, so any code
  calling the encoder (predict included) replays it.

Outside CUDA, with gradients enabled, or (encoder) in training mode they run eagerly.
"""
import logging
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from fafnet.io.logs import error_summary

logger = logging.getLogger(__name__)

MAX_GRAPHS = 32       # graphs kept per wrapper (one per distinct signature seen); beyond, eager
WARMUP_PASSES = 2     # eager passes on a side stream before a capture (algorithms, FFT plans)


def _signature(tensors: Sequence[torch.Tensor]) -> Tuple:
    device = tensors[0].device
    autocast = torch.is_autocast_enabled(device.type)
    return (tuple((tuple(t.shape), t.stride(), t.dtype) for t in tensors), str(device), autocast,
            torch.get_autocast_dtype(device.type) if autocast else None)


class _GraphCache:
    """CUDA graphs of `function(*tensors)`, one per input signature. The function returns a
    tensor or a tuple of tensors and Nones (a model's encoder: FAF-Net's returns (features,
    thresholds or None), ADNet's a tensor); a replay returns the same structure."""

    def __init__(self, function: Callable[..., object], what: str, max_graphs: int,
                 log: logging.Logger):
        self.function, self.what, self.max_graphs, self.log = function, what, max_graphs, log
        self.graphs: Dict[Tuple, Tuple["torch.cuda.CUDAGraph", list, Tuple[torch.Tensor, ...]]] = {}
        self.pool = None
        self.failed = False
        self.replays = 0

    def __call__(self, *tensors: torch.Tensor) -> Optional[object]:
        """The function's outputs (copies) from a graph replay, or None: run it eagerly."""
        if self.failed:
            return None
        key = _signature(tensors)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            entry = self._capture(tensors, key)
            if entry is None:
                return None
        graph, static_inputs, static_outputs = entry
        for static, tensor in zip(static_inputs, tensors):
            static.copy_(tensor)
        graph.replay()
        self.replays += 1
        # Copies: the next replay overwrites the static outputs.
        if isinstance(static_outputs, torch.Tensor):
            return static_outputs.clone()
        return tuple(None if output is None else output.clone() for output in static_outputs)

    @staticmethod
    def _autocast(key: Tuple):
        # The weight-cast cache must stay off while capturing: a cast cached outside the graph
        # would be freed while the graph still reads it.
        enabled, dtype = key[2], key[3]
        return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

    def _capture(self, tensors: Sequence[torch.Tensor], key: Tuple):
        static_inputs = [tensor.clone() for tensor in tensors]
        device = tensors[0].device
        try:
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device)
            side.wait_stream(current)
            with torch.cuda.stream(side), self._autocast(key):
                for _ in range(WARMUP_PASSES):
                    self.function(*static_inputs)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), self._autocast(key):
                static_outputs = self.function(*static_inputs)
            if not isinstance(static_outputs, torch.Tensor):
                static_outputs = tuple(static_outputs)
        except Exception as error:
            self.log.warning("capturing the %s in a CUDA graph failed (%s); evaluation continues "
                             "without graphs", self.what, error_summary(error))
            self.failed = True
            torch.cuda.synchronize(device)
            return None
        self.pool = graph.pool()
        entry = (graph, static_inputs, static_outputs)
        self.graphs[key] = entry
        return entry


class _Graphed:
    """What a graph wrapper reports of its `_GraphCache` (`self.cache`)."""
    cache: _GraphCache

    @property
    def graphs(self) -> Dict:
        return self.cache.graphs

    @property
    def replays(self) -> int:
        return self.cache.replays


class GraphedPredict(_Graphed):
    """`model.predict` replayed from one CUDA graph per (support, masks, queries) signature.

    Args:
        model: a model of fafnet.models.interface; its predict runs in eval mode.
        max_graphs: graphs kept at most; further signatures run eagerly.
        log: logger for the one warning when a capture fails (default: this module's).
    """

    def __init__(self, model: nn.Module, max_graphs: int = MAX_GRAPHS, log: Optional[logging.Logger] = None):
        self.model = model
        self.batch_size: Optional[int] = None
        self.cache = _GraphCache(self._predict, "predict call", max_graphs, log or logger)

    def _predict(self, support_images, support_masks, query_images) -> torch.Tensor:
        return self.model.predict(support_images, support_masks, query_images, batch_size=self.batch_size)

    def __call__(self, support_images: torch.Tensor, support_masks: torch.Tensor, query_images: torch.Tensor,
                 batch_size: Optional[int] = None) -> torch.Tensor:
        """Foreground probabilities [Q, H, W], as `model.predict(...)`."""
        if support_images.device.type != "cuda":
            return self.model.predict(support_images, support_masks, query_images, batch_size=batch_size)
        if self.batch_size != batch_size and self.cache.graphs:
            # The batch size shapes the captured work: graphs of another one do not apply.
            self.cache.graphs.clear()
        self.batch_size = batch_size
        outputs = self.cache(support_images, support_masks, query_images)
        if outputs is None:
            return self.model.predict(support_images, support_masks, query_images, batch_size=batch_size)
        return outputs

    # Stands in for the model where callers segment with `model.predict(...)`.
    predict = __call__


class GraphedEncoder(_Graphed):
    """Replaces `encoder.forward` while in a `with` block (or between install/uninstall) by
    graph replays; eager in training mode, with gradients enabled or off CUDA.

    Args:
        encoder: the model's `image_encoder()` (a module returning a tensor or a tuple of
            tensors and Nones).
        max_graphs: graphs kept at most; further signatures run eagerly.
        log: logger for the one warning when a capture fails (default: this module's).
    """

    def __init__(self, encoder: nn.Module, max_graphs: int = MAX_GRAPHS, log: Optional[logging.Logger] = None):
        self.encoder = encoder
        self.eager_forward = type(encoder).forward.__get__(encoder)
        self.cache = _GraphCache(self.eager_forward, "encoder", max_graphs, log or logger)

    def install(self) -> "GraphedEncoder":
        if "forward" in vars(self.encoder):
            raise RuntimeError("the encoder's forward is already replaced (compiled or graphed)")
        self.encoder.forward = self
        return self

    def uninstall(self) -> None:
        if vars(self.encoder).get("forward") is self:
            del self.encoder.forward

    def __enter__(self) -> "GraphedEncoder":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def __call__(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if images.device.type != "cuda" or self.encoder.training or torch.is_grad_enabled():
            return self.eager_forward(images)
        outputs = self.cache(images)
        return self.eager_forward(images) if outputs is None else outputs
