"""FAF-Net's building blocks (docs/protocol.md sections 3 to 5): masked average pooling
(section 3), the Intra-class Commonality Miner `ICM` (section 4) and the Adaptive Fourier
Filter `AFF` (section 5).

Notation: B batch, C channels (512), m heads (4), h x w feature size, H x W image size.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

MASK_EPS = 1e-5


def masked_average_pooling(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Prototype of each feature map under its mask.

    The features are upsampled bilinearly (align_corners=True) to the mask size first, so the
    mask keeps its full resolution: p = sum(F * M) / (sum(M) + 1e-5).

    Args:
        features: [N, C, h, w].
        masks: [N, H, W], values in [0, 1].
    Returns:
        prototypes [N, C].
    """
    if features.dim() != 4 or masks.dim() != 3 or features.shape[0] != masks.shape[0]:
        raise ValueError(f"masked_average_pooling needs features [N,C,h,w] and masks [N,H,W], "
                         f"got {tuple(features.shape)} and {tuple(masks.shape)}")
    upsampled = F.interpolate(features, size=masks.shape[-2:], mode="bilinear", align_corners=True)
    masks = masks.unsqueeze(1).to(upsampled.dtype)
    return (upsampled * masks).sum(dim=(2, 3)) / (masks.sum(dim=(2, 3)) + MASK_EPS)


def apply_fourier_filters(attention: torch.Tensor, amplitude_filter: torch.Tensor,
                          phase_filter: torch.Tensor) -> torch.Tensor:
    """Scales the amplitude and the phase of the attention map's real spectrum.

    S = rfft2(A); A' = irfft2(|S| * a * exp(i * angle(S) * p), s=(h, w)). Computed in float32
    (float64 stays float64) whatever the autocast state: the FFT has no bfloat16 kernels and
    needs the precision.

    Args:
        attention: [B, m, h, w].
        amplitude_filter, phase_filter: [B, m, h, w // 2 + 1].
    Returns:
        filtered attention [B, m, h, w], float32 or float64.
    """
    height, width = attention.shape[-2:]
    dtype = torch.promote_types(attention.dtype, torch.float32)
    with torch.autocast(device_type=attention.device.type, enabled=False):
        spectrum = torch.fft.rfft2(attention.to(dtype), norm="backward")
        amplitude = spectrum.abs() * amplitude_filter.to(dtype)
        phase = spectrum.angle() * phase_filter.to(dtype)
        # torch.polar requires a non-negative amplitude; the learnt filter may be negative.
        filtered = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
        return inverse_real_fft2(filtered, (height, width))


def inverse_real_fft2(spectrum: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """`torch.fft.irfft2(spectrum, s=size, norm="backward")` with one result on every device.

    After the phase filter the half spectrum is no longer Hermitian, and for such input the
    C2R transform is implementation-defined: cuFFT's result depends on the plan (batch size),
    pocketfft's (CPU) does not. This spells out the CPU's semantics: a complex inverse FFT
    over the rows, then a real inverse FFT over the columns, which reads only the real part
    of its zero (and, for even width, Nyquist) frequency. Equal to irfft2 on CPU.

    Args:
        spectrum: [..., h, w // 2 + 1] complex.
    Returns:
        [..., h, w] real.
    """
    height, width = size
    rows_inverted = torch.fft.ifft(spectrum, n=height, dim=-2, norm="backward")
    # Built on the device without host values (no item assignment), so the step can be
    # captured in a CUDA graph.
    frequencies = torch.arange(width // 2 + 1, device=spectrum.device)
    real_only = frequencies == 0
    if width % 2 == 0:
        real_only = real_only | (frequencies == width // 2)
    hermitian = torch.complex(rows_inverted.real, rows_inverted.imag.masked_fill(real_only, 0.0))
    return torch.fft.irfft(hermitian, n=width, dim=-1, norm="backward")


class FourierFilterGenerator(nn.Module):
    """Predicts one spectral filter per head from a feature map (one AFF branch).

    a1 = conv1x1(G); a2 = conv3x3(relu(a1)) + a1; a3 = relu(conv1x1_{C->m}(relu(a2)));
    filter = Linear(h*w -> h*(w//2+1))(a3 flattened row-major).
    """

    def __init__(self, channels: int, heads: int, feature_size: Tuple[int, int]):
        super().__init__()
        height, width = feature_size
        self.spectrum_size = (height, width // 2 + 1)
        self.conv_in = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.conv_mid = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv_heads = nn.Conv2d(channels, heads, kernel_size=1, bias=False)
        self.spectrum_linear = nn.Linear(height * width, self.spectrum_size[0] * self.spectrum_size[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, C, h, w] -> filter [B, m, h, w // 2 + 1]."""
        a1 = self.conv_in(features)
        a2 = self.conv_mid(F.relu(a1)) + a1
        a3 = F.relu(self.conv_heads(F.relu(a2)))
        spectrum_filter = self.spectrum_linear(a3.flatten(2))
        return spectrum_filter.unflatten(-1, self.spectrum_size)


class AFF(nn.Module):
    """Adaptive Fourier Filter: filters each head's attention map in the frequency domain with
    amplitude and phase filters predicted from the attended feature map."""

    def __init__(self, channels: int = 512, heads: int = 4, feature_size: Tuple[int, int] = (65, 65)):
        super().__init__()
        self.amplitude = FourierFilterGenerator(channels, heads, feature_size)
        self.phase = FourierFilterGenerator(channels, heads, feature_size)

    def forward(self, attention: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """attention [B, m, h, w], features [B, C, h, w] -> filtered attention [B, m, h, w] (float32)."""
        return apply_fourier_filters(attention, self.amplitude(features), self.phase(features))


class ICM(nn.Module):
    """Intra-class Commonality Miner: multi-head cross-attention from a prototype to the pixels
    of a feature map, with the attention logits filtered by the AFF; p' = p + W_o(heads).
    With `aff=False` (FAF-Net's ablation switch) the logits go to the softmax unfiltered and the
    AFF's filter generators are not built.

    The projections are Linear C -> m*C (head i = output block i*C .. (i+1)*C - 1). Instead of
    projecting every pixel (hw x m*C keys and values), the same result is computed through
    the per-head weight blocks: q_i.(W_k,i g + b_k,i) = (W_k,i^T q_i).g + q_i.b_k,i and
    sum_j w_j (W_v,i g_j + b_v,i) = W_v,i (sum_j w_j g_j) + b_v,i (softmax weights sum to 1).
    This is the same arithmetic expression reassociated: equal up to float rounding, and it
    saves two hw x C x m*C products per call.
    """

    def __init__(self, channels: int = 512, heads: int = 4, feature_size: Tuple[int, int] = (65, 65),
                 aff: bool = True):
        super().__init__()
        self.channels = channels
        self.heads = heads
        self.query_proj = nn.Linear(channels, heads * channels)
        self.key_proj = nn.Linear(channels, heads * channels)
        self.value_proj = nn.Linear(channels, heads * channels)
        self.out_proj = nn.Linear(heads * channels, channels)
        self.aff = AFF(channels, heads, feature_size) if aff else None

    def _per_head(self, tensor: torch.Tensor) -> torch.Tensor:
        """[..., m*C] -> [..., m, C] (head i takes the i-th block of C elements)."""
        return tensor.unflatten(-1, (self.heads, self.channels))

    def attention_logits(self, prototypes: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """prototypes [B, C], pixels [B, C, hw] -> q K^T / sqrt(C) as [B, m, hw]."""
        queries = self._per_head(self.query_proj(prototypes))                      # [B, m, C]
        key_weight = self.key_proj.weight.unflatten(0, (self.heads, self.channels))  # [m, C_out, C_in]
        key_bias = self._per_head(self.key_proj.bias)                                # [m, C]
        projected_queries = torch.matmul(queries.unsqueeze(-2), key_weight).squeeze(-2)  # [B, m, C_in]
        query_dot_bias = (queries * key_bias).sum(-1, keepdim=True)                 # [B, m, 1]
        logits = torch.matmul(projected_queries, pixels) + query_dot_bias           # [B, m, hw]
        return logits / math.sqrt(self.channels)

    def attend(self, weights: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """weights [B, m, hw] (rows sum to 1), pixels [B, C, hw] -> heads concatenated [B, m*C]."""
        pooled = torch.matmul(weights.to(pixels.dtype), pixels.transpose(1, 2))     # [B, m, C_in]
        value_weight = self.value_proj.weight.unflatten(0, (self.heads, self.channels))
        values = torch.matmul(pooled.unsqueeze(-2), value_weight.transpose(1, 2)).squeeze(-2)
        return (values + self._per_head(self.value_proj.bias)).flatten(-2)

    def forward(self, prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Refines prototype b by attending over feature map b.

        Args:
            prototypes: [B, C].
            features: [B, C, h, w] (also the source of the AFF filters).
        Returns:
            refined prototypes [B, C].
        """
        if prototypes.dim() != 2 or features.dim() != 4 or prototypes.shape[0] != features.shape[0]:
            raise ValueError(f"ICM needs prototypes [B,C] and features [B,C,h,w], "
                             f"got {tuple(prototypes.shape)} and {tuple(features.shape)}")
        height, width = features.shape[-2:]
        pixels = features.flatten(2)                                                 # [B, C, hw], row-major
        logits = self.attention_logits(prototypes, pixels).unflatten(-1, (height, width))
        filtered = logits if self.aff is None else self.aff(logits, features)        # [B, m, h, w]
        weights = torch.softmax(filtered.flatten(2), dim=-1)
        return prototypes + self.out_proj(self.attend(weights, pixels))
