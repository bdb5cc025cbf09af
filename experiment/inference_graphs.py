"""CUDA graphs for the encoder at inference time (evaluation with `FAFNet.predict`).

With one support slice and a few query slices per `predict` call (the EP1 protocol splits each
query volume into 3 chunks), the GPU spends much of its time waiting for the ~300 kernel
launches of each ResNet encoder pass. `GraphedEncoder` captures the eval-mode encoder once per
input signature (batch size, image shape, dtype, memory format, autocast state) and replays
the graph afterwards; the result equals the eager encoder's up to the cuDNN algorithm choice.

    with GraphedEncoder(model.encoder):
        foreground = model.predict(support_images, support_masks, query_images)

Outside CUDA, in training mode or with gradients enabled it simply runs the encoder.
"""
import logging
from typing import Dict, Optional, Tuple

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Graphs kept per encoder (one per distinct batch size seen, typically); beyond, eager.
MAX_GRAPHS = 32
WARMUP_PASSES = 2


class GraphedEncoder:
    """Replaces `encoder.forward` while in a `with` block (or between install/uninstall).

    Args:
        encoder: the model's ResNet101Encoder (any module returning a tuple of tensors).
        max_graphs: graphs kept at most; further signatures run eagerly.
        log: logger for the one warning when a capture fails (default: this module's).
    """

    def __init__(self, encoder: nn.Module, max_graphs: int = MAX_GRAPHS, log: Optional[logging.Logger] = None):
        self.encoder = encoder
        self.eager_forward = type(encoder).forward.__get__(encoder)
        self.max_graphs = max_graphs
        self.log = log or logger
        self.graphs: Dict[Tuple, Tuple["torch.cuda.CUDAGraph", torch.Tensor, Tuple[torch.Tensor, ...]]] = {}
        self.pool = None
        self.failed = False
        self.replays = 0

    # -- installation ------------------------------------------------------------------------
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

    # -- calls -------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if (images.device.type != "cuda" or self.encoder.training or torch.is_grad_enabled()
                or self.failed):
            return self.eager_forward(images)
        key = self._signature(images)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.eager_forward(images)
            entry = self._capture(images, key)
            if entry is None:
                return self.eager_forward(images)
        graph, static_input, static_outputs = entry
        static_input.copy_(images)
        graph.replay()
        self.replays += 1
        # Copies: the next replay overwrites the static outputs.
        return tuple(output.clone() for output in static_outputs)

    @staticmethod
    def _signature(images: torch.Tensor) -> Tuple:
        device = images.device.type
        autocast = torch.is_autocast_enabled(device)
        return (tuple(images.shape), images.stride(), images.dtype, str(images.device), autocast,
                torch.get_autocast_dtype(device) if autocast else None)

    def _autocast(self, key: Tuple):
        # The weight-cast cache must stay off while capturing: a cast cached outside the graph
        # would be freed while the graph still reads it.
        enabled, dtype = key[4], key[5]
        return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

    def _capture(self, images: torch.Tensor, key: Tuple):
        static_input = images.clone()
        try:
            current = torch.cuda.current_stream(images.device)
            side = torch.cuda.Stream(images.device)
            side.wait_stream(current)
            with torch.cuda.stream(side), self._autocast(key):
                for _ in range(WARMUP_PASSES):
                    self.eager_forward(static_input)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"), self._autocast(key):
                static_outputs = tuple(self.eager_forward(static_input))
        except Exception as error:
            self.log.warning("capturing the encoder in a CUDA graph failed (%s: %s); evaluation "
                             "continues without graphs", type(error).__name__,
                             str(error).splitlines()[0] if str(error) else "")
            self.failed = True
            torch.cuda.synchronize(images.device)
            return None
        self.pool = graph.pool()
        entry = (graph, static_input, static_outputs)
        self.graphs[key] = entry
        return entry
