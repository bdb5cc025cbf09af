"""Unit tests of the model's small parts: feature-size arithmetic, masked average pooling, the
AFF spectrum filter, the ICM against a literal implementation of docs/protocol.md section 4,
the losses."""
import math

import pytest
import torch
from torch import nn

from fafnet.models import AFF, ICM, apply_fourier_filters, feature_size, masked_average_pooling, query_loss
from fafnet.models.modules import inverse_real_fft2
from fafnet.models.fafnet import clamped_nll

EPS32 = torch.finfo(torch.float32).eps


# -- feature size ----------------------------------------------------------------------------
@pytest.mark.parametrize("size, expected", [((257, 257), (65, 65)), ((256, 256), (64, 64)),
                                            ((97, 130), (25, 33)), ((1, 2), (1, 1))])
def test_feature_size_known_answers(size, expected):
    assert feature_size(*size) == expected


@pytest.mark.parametrize("height", [5, 6, 7, 8, 64, 65, 66])
def test_feature_size_matches_the_stem(height):
    # conv1 + max-pool are the only size-changing layers up to layer3.
    stem = nn.Sequential(nn.Conv2d(1, 1, 7, stride=2, padding=3), nn.MaxPool2d(3, stride=2, padding=1))
    out = stem(torch.zeros(1, 1, height, height + 3))
    assert tuple(out.shape[-2:]) == feature_size(height, height + 3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "65"])
def test_feature_size_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="image height must be a positive int"):
        feature_size(bad, 65)


# -- masked average pooling ------------------------------------------------------------------
def test_masked_average_pooling_hand_computed():
    features = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]], [[5.0, 5.0], [5.0, 5.0]]]])  # [1, 2, 2, 2]
    # align_corners=True upsampling to 3x3 gives [[0,1,2],[2,3,4],[4,5,6]] for channel 0.
    mask = torch.zeros(1, 3, 3)
    mask[0, :2, :2] = 1.0
    expected = torch.tensor([[(0 + 1 + 2 + 3) / (4 + 1e-5), 20 / (4 + 1e-5)]])
    torch.testing.assert_close(masked_average_pooling(features, mask), expected)


def test_masked_average_pooling_empty_mask_is_zero_and_shapes_checked():
    assert masked_average_pooling(torch.ones(2, 3, 4, 4), torch.zeros(2, 8, 8)).abs().max() == 0
    with pytest.raises(ValueError, match="masks \\[N,H,W\\]"):
        masked_average_pooling(torch.ones(2, 3, 4, 4), torch.zeros(1, 8, 8))


# -- AFF ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("height, width", [(65, 65), (64, 64), (7, 10)])
def test_fourier_filters_of_ones_are_identity(height, width):
    attention = torch.randn(2, 4, height, width)
    ones = torch.ones(2, 4, height, width // 2 + 1)
    torch.testing.assert_close(apply_fourier_filters(attention, ones, ones), attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height, width", [(65, 65), (64, 64), (5, 6)])
def test_inverse_real_fft2_equals_torch_on_cpu_for_non_hermitian_input(height, width):
    spectrum = torch.randn(2, 3, height, width // 2 + 1, dtype=torch.complex128)
    expected = torch.fft.irfft2(spectrum, s=(height, width), norm="backward")
    torch.testing.assert_close(inverse_real_fft2(spectrum, (height, width)), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inverse_real_fft2_is_the_same_on_cuda_for_any_batch():
    spectrum = torch.randn(8, 4, 65, 33, dtype=torch.complex64)
    expected = inverse_real_fft2(spectrum, (65, 65))
    for batch in (1, 8):
        on_cuda = inverse_real_fft2(spectrum[:batch].cuda(), (65, 65)).cpu()
        torch.testing.assert_close(on_cuda, expected[:batch], atol=1e-4, rtol=1e-4)


def test_fourier_filter_keeping_only_dc_gives_the_mean():
    attention = torch.randn(1, 2, 6, 9)
    amplitude = torch.zeros(1, 2, 6, 5)
    amplitude[..., 0, 0] = 1.0
    filtered = apply_fourier_filters(attention, amplitude, torch.ones_like(amplitude))
    expected = attention.mean(dim=(2, 3), keepdim=True).expand_as(attention)
    torch.testing.assert_close(filtered, expected, atol=1e-6, rtol=1e-5)


def test_fourier_filter_doubling_amplitude_doubles_map():
    attention = torch.randn(1, 2, 5, 5)
    twos = torch.full((1, 2, 5, 3), 2.0)
    torch.testing.assert_close(apply_fourier_filters(attention, twos, torch.ones_like(twos)), 2 * attention,
                               atol=1e-5, rtol=1e-5)


def test_aff_module_with_all_ones_filters_returns_attention_unchanged():
    aff = AFF(channels=8, heads=4, feature_size=(9, 7))
    for branch in (aff.amplitude, aff.phase):
        assert branch.spectrum_linear.weight.shape == (9 * 4, 9 * 7)
        nn.init.zeros_(branch.spectrum_linear.weight)
        nn.init.ones_(branch.spectrum_linear.bias)
    attention = torch.randn(3, 4, 9, 7)
    torch.testing.assert_close(aff(attention, torch.randn(3, 8, 9, 7)), attention, atol=1e-5, rtol=1e-5)


def test_aff_runs_in_float32_under_bfloat16_autocast():
    aff = AFF(channels=8, heads=4, feature_size=(6, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aff(torch.randn(1, 4, 6, 6), torch.randn(1, 8, 6, 6))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# -- ICM ---------------------------------------------------------------------------------------
def literal_icm(icm: ICM, prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """docs/protocol.md section 4 word for word: project every pixel to keys and values."""
    batch, channels, height, width = features.shape
    heads = icm.heads
    pixels = features.flatten(2).transpose(1, 2)                                  # [B, hw, C]
    q = icm.query_proj(prototypes).view(batch, 1, heads, channels).transpose(1, 2)  # [B, m, 1, C]
    k = icm.key_proj(pixels).view(batch, -1, heads, channels).transpose(1, 2)       # [B, m, hw, C]
    v = icm.value_proj(pixels).view(batch, -1, heads, channels).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(channels)                          # [B, m, 1, hw]
    filtered = icm.aff(logits.view(batch, heads, height, width), features)
    weights = torch.softmax(filtered.reshape(batch, heads, 1, -1).to(v.dtype), dim=-1)
    x = (weights @ v).reshape(batch, heads * channels)
    return prototypes + icm.out_proj(x)


def test_icm_equals_the_literal_specification():
    torch.manual_seed(0)
    icm = ICM(channels=8, heads=4, feature_size=(5, 6)).double()
    prototypes, features = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        for parameter in icm.parameters():  # non-trivial biases and filters
            parameter.normal_(0, 0.3)
    torch.testing.assert_close(icm(prototypes, features), literal_icm(icm, prototypes, features),
                               atol=1e-10, rtol=1e-10)


def test_icm_pairs_prototype_b_with_feature_map_b():
    torch.manual_seed(0)
    icm = ICM(channels=8, heads=2, feature_size=(4, 4))
    prototypes, features = torch.randn(2, 8), torch.randn(2, 8, 4, 4)
    both = icm(prototypes, features)
    torch.testing.assert_close(both[1:], icm(prototypes[1:], features[1:]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ICM needs prototypes"):
        icm(prototypes[:1], features)


# -- losses ------------------------------------------------------------------------------------
def test_query_loss_hand_computed():
    # pixel 0: label 0 with p_bg = 0.8; pixel 1: label 1 with p_fg = 0.25; pixel 2: label 1 with p_fg = 0.
    fg = torch.tensor([[[0.2, 0.25, 0.0]]])
    probs = torch.stack([1 - fg, fg], dim=1)
    labels = torch.tensor([[[0, 1, 1]]])
    expected = (0.1 * -math.log(0.8) + 1.0 * -math.log(0.25) + 1.0 * -math.log(EPS32)) / 2.1
    assert query_loss(probs, labels).item() == pytest.approx(expected, rel=1e-5)


def test_query_loss_matches_weighted_formula_on_random_input():
    torch.manual_seed(0)
    fg = torch.rand(2, 5, 7)
    probs = torch.stack([1 - fg, fg], dim=1)
    labels = (torch.rand(2, 5, 7) > 0.6).long()
    weights = torch.where(labels == 1, 1.0, 0.1)
    chosen = torch.where(labels == 1, fg, 1 - fg).clamp(EPS32, 1 - EPS32)
    expected = (weights * -chosen.log()).sum() / weights.sum()
    torch.testing.assert_close(query_loss(probs, labels), expected)


def test_query_loss_rejects_bad_labels():
    probs = torch.full((1, 2, 2, 2), 0.5)
    with pytest.raises(ValueError, match="0 \\(background\\) or 1"):
        query_loss(probs, torch.full((1, 2, 2), 2))
    with pytest.raises(ValueError, match="integer tensor"):
        query_loss(probs, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="labels \\[N,H,W\\]"):
        query_loss(probs, torch.zeros(1, 3, 2, dtype=torch.long))


def test_clamped_nll_unweighted_is_plain_mean():
    fg = torch.tensor([[[0.5, 1.0]]])
    probs = torch.stack([1 - fg, fg], dim=1)
    labels = torch.tensor([[[1, 1]]])
    expected = (-math.log(0.5) - math.log(1 - EPS32)) / 2
    assert clamped_nll(probs, labels).item() == pytest.approx(expected, rel=1e-6)
    # Gradients flow through unclamped probabilities only.
    probs.requires_grad_(True)
    clamped_nll(probs, labels).backward()
    assert probs.grad[0, 1, 0, 0].item() == pytest.approx(-1 / (2 * 0.5))
