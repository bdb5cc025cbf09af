"""SSL-ALPNet (docs/protocol.md section 16): known answers for its prototypes, scores and losses,
worked out by hand on tiny tensors, and the whole model on 33 x 33 images (5 x 5 features):
shapes, the registry, `predict` == eval-mode `forward`, gradients, autocast, input checks and
pretrained backbone loading.

Every expected value is written out from the formula (literal numbers or a few lines of
arithmetic next to it), never read from the code's own constants."""
import copy
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

from fafnet.models import ALPNet, build_model, get_model, resolve_model_options, ssl_alpnet
from fafnet.models.deeplab_encoder import deeplab_feature_size
from fafnet.models.ssl_alpnet import (alignment_loss, class_scores, cosine_score, episode_prototypes,
                                      has_full_foreground_window, local_prototypes, prototype_score,
                                      prototype_window, query_cross_entropy, resize_masks, upsample_scores)

SIZE = (33, 33)          # -> 5 x 5 features
F64 = dict(dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    """log(1 + e^x): the cross-entropy of a 2-class pixel whose wrong-minus-right logit is x."""
    return math.log1p(math.exp(x))


def pixels_to_map(pixels, height, width):
    """[1, C, h, w] float64 from row-major pixel vectors."""
    return torch.tensor(pixels, **F64).T.reshape(1, -1, height, width)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics set to those of `images`, then eval mode (a random ResNet
    with the default statistics saturates every score)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.encoder(images)
    return model.eval()


def episode(shots: int, queries: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(shots, 3, *SIZE, generator=generator)
    query = torch.randn(queries, 3, *SIZE, generator=generator)
    masks = torch.zeros(shots, *SIZE)
    masks[:, 14:, 12:] = 1.0        # 5 x 5 features: rows 2-4 x cols 2-4; the rest has full background windows
    labels = torch.zeros(queries, *SIZE, dtype=torch.long)
    labels[:, 12:30, 10:28] = 1
    return support, masks, query, labels


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = ALPNet(image_size=SIZE)
    return calibrate_batchnorm(net, torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(5)))


# -- the local-prototype window ---------------------------------------------------------------------
@pytest.mark.parametrize("features, training, window", [
    ((32, 32), True, (4, 4)),     # 8 x 8 windows: 32 / 8
    ((33, 33), True, (4, 4)),     # floor(33 / 8)
    ((64, 64), True, (8, 8)),
    ((16, 40), True, (2, 5)),
    ((32, 32), False, (2, 2)),    # evaluation: always 2 x 2
    ((33, 33), False, (2, 2)),
    ((64, 64), False, (2, 2)),
    ((5, 5), True, (1, 1)),       # tiny maps: at least 1
    ((1, 3), False, (1, 2)),      # at most the feature size
])
def test_prototype_window(features, training, window):
    assert prototype_window(features, training) == window


def test_the_models_window_follows_its_mode(model):
    net = copy.copy(model)   # shallow: the mode flag only
    assert net.feature_size == (5, 5)
    net.training = True
    assert net.window() == (1, 1)
    net.training = False
    assert net.window() == (2, 2)


# -- resizing: bilinear, align_corners=False (masks down to h x w, scores up to H x W) ---------------
def test_masks_are_resized_bilinearly_without_aligned_corners():
    mask = torch.zeros(1, 4, 4, **F64)
    mask[0, :, 0] = 1.0
    # 4 -> 2: output column j samples x = (j + 0.5) * 2 - 0.5 = 0.5, 2.5: (1 + 0) / 2 and 0.
    # (align_corners=True would sample x = 0 and 3: 1 and 0.)
    torch.testing.assert_close(resize_masks(mask, (2, 2)), torch.tensor([[[[0.5, 0.0], [0.5, 0.0]]]], **F64))


def test_scores_are_upsampled_bilinearly_without_aligned_corners():
    scores = torch.tensor([[2.0, 6.0]], **F64).view(1, 1, 1, 2).expand(1, 2, 1, 2)
    # 2 -> 4: x = (j + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    expected = torch.tensor([2.0, 0.75 * 2 + 0.25 * 6, 0.25 * 2 + 0.75 * 6, 6.0], **F64)
    torch.testing.assert_close(upsample_scores(scores, (1, 4))[0, 1, 0], expected)


# -- local prototypes: avg-pooled features of the windows whose pooled mask is > 0.95 --------------
def row_col_features(height, width):
    """Channel 0 = row index, channel 1 = column index: a window's mean is its centre."""
    rows = torch.arange(height, **F64).view(-1, 1).expand(height, width)
    cols = torch.arange(width, **F64).view(1, -1).expand(height, width)
    return torch.stack([rows, cols])[None]


def two_blocks_mask():
    """32 x 32: rows 0-3 x cols 0-3 full, rows 4-7 x cols 0-1 full."""
    mask = torch.zeros(1, 1, 32, 32, **F64)
    mask[..., 0:4, 0:4] = 1.0
    mask[..., 4:8, 0:2] = 1.0
    return mask


def test_local_prototypes_with_the_training_window():
    features, mask = row_col_features(32, 32), two_blocks_mask()
    prototypes, valid = local_prototypes(features, mask, prototype_window((32, 32), training=True))
    assert prototypes.shape == (64, 2) and valid.shape == (64,)       # 8 x 8 windows of 4 x 4
    # Window (0, 0) covers rows/cols 0..3: mask mean 1 -> a prototype, the centre (1.5, 1.5).
    # Window (1, 0) covers rows 4..7, cols 0..3: mask mean 8 / 16 = 0.5 -> not a prototype.
    torch.testing.assert_close(prototypes[valid], torch.tensor([[1.5, 1.5]], **F64))
    torch.testing.assert_close(prototypes[8], torch.tensor([5.5, 1.5], **F64))


def test_local_prototypes_with_the_evaluation_window():
    features, mask = row_col_features(32, 32), two_blocks_mask()
    prototypes, valid = local_prototypes(features, mask, prototype_window((32, 32), training=False))
    assert prototypes.shape == (256, 2)                                # 16 x 16 windows of 2 x 2
    # Full 2 x 2 windows: (0,0), (0,1), (1,0), (1,1) of the first block, (2,0), (3,0) of the second.
    expected = [[0.5, 0.5], [0.5, 2.5], [2.5, 0.5], [2.5, 2.5], [4.5, 0.5], [6.5, 0.5]]
    torch.testing.assert_close(prototypes[valid], torch.tensor(expected, **F64))


def test_local_prototype_threshold_is_strictly_above_0_95():
    features = torch.arange(32, **F64).view(2, 1, 4, 4).expand(2, 2, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, **F64)
    mask[0, 0, 0:2, 0:2] = torch.tensor([[1.0, 1.0], [1.0, 0.8125]])     # mean 0.953125 > 0.95
    mask[0, 0, 0:2, 2:4] = torch.tensor([[1.0, 1.0], [1.0, 0.78125]])    # mean 0.9453125
    mask[1, 0, 2:4, 2:4] = 1.0                                           # shot 1, last window
    prototypes, valid = local_prototypes(features, mask, (2, 2))
    # Shot by shot, windows row-major: shot 0 window 0, shot 1 window 3.
    assert valid.tolist() == [True, False, False, False, False, False, False, True]
    # Shot 0 window 0 holds 0, 1, 4, 5 (mean 2.5); shot 1 window 3 holds 26, 27, 30, 31 (mean 28.5).
    torch.testing.assert_close(prototypes[valid], torch.tensor([[2.5, 2.5], [28.5, 28.5]], **F64))
    # Exactly 0.95 is not enough (1 x 1 windows pool nothing away).
    one = torch.tensor([0.95, 0.95 + 1e-9], **F64).view(1, 1, 1, 2)
    assert local_prototypes(torch.ones(1, 2, 1, 2, **F64), one, (1, 1))[1].tolist() == [False, True]


# -- the foreground's choice: local + global when avg_pool2d(M, 4).max() >= 0.95 ---------------------
def test_foreground_check_uses_4x4_windows_with_stride_4():
    aligned = torch.zeros(1, 1, 8, 8, **F64)
    aligned[..., 4:8, 4:8] = 1.0
    shifted = torch.zeros(1, 1, 8, 8, **F64)
    shifted[..., 2:6, 2:6] = 1.0          # every 4 x 4 window of the stride-4 grid holds 4 / 16
    assert bool(has_full_foreground_window(aligned))
    assert not bool(has_full_foreground_window(shifted))
    almost = torch.zeros(1, 1, 8, 8, **F64)
    almost[..., 0:4, 0:4] = 1.0
    almost[..., 0, 0] = 0.25              # mean 15.25 / 16 = 0.953125
    assert bool(has_full_foreground_window(almost))
    almost[..., 0, 0] = 0.125             # mean 15.125 / 16 = 0.9453125
    assert not bool(has_full_foreground_window(almost))
    # Exactly 0.95 is enough (>=): on a 1 x 1 map the window is the pixel itself.
    assert bool(has_full_foreground_window(torch.full((1, 1, 1, 1), 0.95, **F64)))
    # K shots: the maximum over every shot.
    assert bool(has_full_foreground_window(torch.cat([shifted, aligned])))


def test_global_prototype_fallback_scores_20_cosine():
    support = torch.zeros(1, 2, 4, 4, **F64)
    support[0, :, 0, 0] = torch.tensor([3.0, 4.0])
    support[0, :, 1, 1] = torch.tensor([6.0, 8.0])
    support[0, :, 3, 3] = torch.tensor([-50.0, 7.0])
    foreground = torch.zeros(1, 1, 4, 4, **F64)
    foreground[..., 0, 0] = foreground[..., 1, 1] = 1.0      # avg_pool(., 4).max() = 2 / 16 < 0.95
    prototypes = episode_prototypes(support, foreground, 1.0 - foreground, (2, 2))
    assert not bool(prototypes.foreground_local)
    # Global prototype: ((3, 4) + (6, 8)) / (2 + 1e-5).
    torch.testing.assert_close(prototypes.foreground_global, torch.tensor([9.0, 12.0], **F64) / (2 + 1e-5))
    # Query pixels with cosines 1, 0, -1, 0.96 and a zero pixel: 20 cos = 20, 0, -20, 19.2, 0.
    query = pixels_to_map(((3.0, 4.0), (4.0, -3.0), (-3.0, -4.0), (4.0, 3.0), (0.0, 0.0), (0.6, 0.8)), 1, 6)
    scores = class_scores(query, prototypes)
    torch.testing.assert_close(scores[0, 1, 0], torch.tensor([20.0, 0.0, -20.0, 19.2, 0.0, 20.0], **F64))
    torch.testing.assert_close(cosine_score(query, torch.tensor([3.0, 4.0], **F64))[0, 0], scores[0, 1, 0])


def test_global_prototype_of_k_shots_is_the_mean_of_the_shots():
    support = torch.cat([torch.tensor([2.0, 0.0], **F64).view(1, 2, 1, 1).expand(1, 2, 4, 4),
                         torch.tensor([0.0, 6.0], **F64).view(1, 2, 1, 1).expand(1, 2, 4, 4)])
    foreground = torch.zeros(2, 1, 4, 4, **F64)
    foreground[0, 0, 0, 0] = 1.0                             # shot 0: one pixel
    foreground[1, 0, 2, 1:3] = 1.0                           # shot 1: two pixels
    prototypes = episode_prototypes(support, foreground, 1.0 - foreground, (2, 2))
    a, b = 2.0 / (1 + 1e-5), 12.0 / (2 + 1e-5)              # (a, 0) and (0, b), mean (a / 2, b / 2)
    torch.testing.assert_close(prototypes.foreground_global, torch.tensor([a / 2, b / 2], **F64))
    query = pixels_to_map(((1.0, 0.0),), 1, 1)
    assert class_scores(query, prototypes)[0, 1, 0, 0].item() == pytest.approx(20 * a / math.hypot(a, b), rel=1e-12)


def test_full_foreground_uses_local_and_global_prototypes():
    support = torch.zeros(1, 2, 4, 4, **F64)
    support[0, 0, 0:2] = 1.0                                 # top half (1, 0), bottom half (0, 1)
    support[0, 1, 2:4] = 1.0
    foreground = torch.ones(1, 1, 4, 4, **F64)
    prototypes = episode_prototypes(support, foreground, 1.0 - foreground, (2, 2))
    assert bool(prototypes.foreground_local)
    # Local (2 x 2 windows): (1, 0), (1, 0), (0, 1), (0, 1); global (8, 8) / (16 + 1e-5) ~ (1, 1).
    query = pixels_to_map(((1.0, 0.0), (3.0, 4.0)), 1, 2)
    expected = []
    for c1, c2 in ((1.0, 0.0), (0.6, 0.8)):
        d = [20 * c1, 20 * c1, 20 * c2, 20 * c2, 20 * (c1 + c2) / math.sqrt(2)]
        expected.append(sum(math.exp(x) * x for x in d) / sum(math.exp(x) for x in d))
    torch.testing.assert_close(class_scores(query, prototypes)[0, 1, 0], torch.tensor(expected, **F64))


# -- the class score: sum_k softmax_k(d) d_k, d_k = 20 <q/|q|, p_k/|p_k|> -----------------------------
def test_softmax_weighted_class_score():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], **F64)
    valid = torch.tensor([True, True, False])                # the third is no prototype
    query = pixels_to_map(((5.0, 0.0), (3.0, 4.0), (0.0, -1.0), (-1.0, 0.0)), 1, 4)
    scores = prototype_score(query, prototypes, valid)[0, 0]
    # (5, 0): d = (20, 0) -> 20 e^20 / (e^20 + 1) = 20 sigmoid(20)
    # (3, 4): d = (12, 16) -> (12 e^12 + 16 e^16) / (e^12 + e^16) = 12 + 4 sigmoid(4)
    # (0, -1): d = (0, -20) -> -20 sigmoid(-20);  (-1, 0): d = (-20, 0) -> -20 sigmoid(-20)
    expected = [20 * sigmoid(20), 12 + 4 * sigmoid(4), -20 * sigmoid(-20), -20 * sigmoid(-20)]
    torch.testing.assert_close(scores, torch.tensor(expected, **F64), atol=1e-12, rtol=1e-12)


def test_norms_are_floored_at_1e_minus_4():
    # Prototype (1e-5, 0) -> (1e-5, 0) / 1e-4 = (0.1, 0): d = 20 * 0.1 = 2 with query (1, 0).
    query = pixels_to_map(((1.0, 0.0),), 1, 1)
    tiny = torch.tensor([[1e-5, 0.0]], **F64)
    assert prototype_score(query, tiny, torch.tensor([True])).item() == pytest.approx(2.0, rel=1e-12)
    assert cosine_score(query, tiny[0]).item() == pytest.approx(2.0, rel=1e-12)
    # Query (0, 5e-5) -> (0, 0.5): d = 10 with prototype (0, 3); a zero query scores 0.
    query = pixels_to_map(((0.0, 5e-5), (0.0, 0.0)), 1, 2)
    scores = prototype_score(query, torch.tensor([[0.0, 3.0]], **F64), torch.tensor([True]))
    torch.testing.assert_close(scores[0, 0], torch.tensor([10.0, 0.0], **F64))
    # Above the floor a norm counts in full: (0, 2e-4) -> (0, 1), d = 20.
    query = pixels_to_map(((0.0, 2e-4),), 1, 1)
    assert prototype_score(query, torch.tensor([[0.0, 3.0]], **F64), torch.tensor([True])).item() == \
        pytest.approx(20.0, rel=1e-12)


def test_a_class_without_prototype_scores_0_with_finite_gradients():
    query = pixels_to_map(((5.0, 0.0), (3.0, 4.0)), 1, 2).requires_grad_()
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]], **F64, requires_grad=True)
    scores = prototype_score(query, prototypes, torch.tensor([False, False]))
    torch.testing.assert_close(scores, torch.zeros(1, 1, 2, **F64))
    scores.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(prototypes.grad).all()


def test_a_class_without_prototype_is_counted(model):
    net = copy.deepcopy(model)   # own counters
    net.reset_prototype_counts()
    features = torch.randn(1, 4, 5, 5, **F64, generator=torch.Generator().manual_seed(1))
    full = torch.ones(1, *SIZE, **F64)
    prototypes = net.support_prototypes(features, full)    # background mask resized to 0: nothing > 0.95
    assert not prototypes.background_valid.any()
    query = torch.randn(2, 4, 5, 5, **F64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(class_scores(query, prototypes)[:, 0], torch.zeros(2, 5, 5, **F64))
    assert net.prototype_free_episodes == {"background": 1, "foreground": 0, "align_background": 0,
                                           "align_foreground": 0}
    net.support_prototypes(features, torch.zeros(1, *SIZE, **F64))   # empty support mask: zero prototype
    assert net.prototype_free_episodes["foreground"] == 1
    # Through the whole model: a support mask covering the image, in eval and via predict.
    support, _, queries, _ = episode(1, 2)
    with torch.no_grad():
        probs, _ = net(support, torch.ones(1, *SIZE), queries)
    # Background logit 0: P(bg) = 1 / (1 + e^fg) = 1 - P(fg) as always; the count is per episode.
    assert net.prototype_free_episodes["background"] == 2
    net.predict(support, torch.ones(1, *SIZE), queries, batch_size=1)
    assert net.prototype_free_episodes["background"] == 3
    assert torch.isfinite(probs).all()
    net.reset_prototype_counts()
    assert set(net.prototype_free_episodes.values()) == {0}
    assert "prototype_free_counts" not in net.state_dict()


# -- the query loss: cross-entropy, class weights 0.05 / 1.0, ignore 255 -------------------------------
def test_query_loss_weights_and_ignore_index():
    logits = torch.tensor([[[0.0, 0.0, 5.0]], [[math.log(3.0), 0.0, -7.0]]], **F64)[None]   # [1, 2, 1, 3]
    labels = torch.tensor([[[0, 1, 255]]])
    # Pixel 0: P(bg) = 1 / (1 + 3), weight 0.05; pixel 1: P(fg) = 1 / 2, weight 1; pixel 2 ignored.
    expected = (0.05 * math.log(4.0) + 1.0 * math.log(2.0)) / (0.05 + 1.0)
    assert query_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-12)
    # The same labels without the ignored pixel give the same loss.
    assert query_cross_entropy(logits[..., :2], labels[..., :2]).item() == pytest.approx(expected, rel=1e-12)


# -- the alignment loss ---------------------------------------------------------------------------------
# 2 x 2 images and 2 x 2 features (resizing is the identity), training window 1 x 1.
QUERY_PIXELS = ((1.0, 0.0), (0.0, 1.0), (2.0, 0.0), (0.0, 2.0))
SUPPORT_PIXELS = ((1.0, 0.0), (0.0, 1.0), (3.0, 4.0), (4.0, 3.0))
SUPPORT_MASKS = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], **F64)   # K = 2


def alignment_inputs(prediction):
    """query logits [1, 2, 2, 2] whose argmax is `prediction` (2 x 2 of 0 / 1)."""
    fg = torch.tensor(prediction, **F64)
    query_logits = torch.stack([1.0 - fg, fg])[None]
    support = torch.cat([pixels_to_map(SUPPORT_PIXELS, 2, 2)] * 2).requires_grad_()
    query = pixels_to_map(QUERY_PIXELS, 2, 2).requires_grad_()
    return support, query, query_logits


def test_alignment_loss_with_a_foreground_pseudo_mask():
    support, query, query_logits = alignment_inputs([[1, 0], [1, 0]])
    loss, background_missing, foreground_empty = alignment_loss(support, SUPPORT_MASKS, query, query_logits, (1, 1))
    # Foreground pseudo-mask: pixels 0 and 2; avg_pool(., 2 x 2 on a 2 x 2 map) = 0.5 < 0.95, so the
    # global prototype alone: ((1, 0) + (2, 0)) / (2 + 1e-5), direction (1, 0); fg = 20 cos(s, (1, 0)).
    # Background: local prototypes (0, 1) and (0, 2), both direction (0, 1): bg = 20 cos(s, (0, 1)).
    # Support pixels (1,0), (0,1), (3,4), (4,3): (bg, fg) = (0, 20), (20, 0), (16, 12), (12, 16).
    # Shot 0 labels 1, 0, 0, 1: each pixel right by 20, 20, 4, 4; shot 1 (flipped) wrong by as much.
    shot0 = (2 * softplus(-20) + 2 * softplus(-4)) / 4
    shot1 = (2 * softplus(20) + 2 * softplus(4)) / 4
    assert loss.item() == pytest.approx((shot0 + shot1) / 2, rel=1e-10)     # / (K * ways)
    assert background_missing.tolist() == [False] and foreground_empty.tolist() == [False]
    loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()


def test_alignment_loss_with_an_empty_pseudo_mask():
    support, query, query_logits = alignment_inputs([[0, 0], [0, 0]])
    loss, background_missing, foreground_empty = alignment_loss(support, SUPPORT_MASKS, query, query_logits, (1, 1))
    # No foreground: its global prototype is 0 / (0 + 1e-5) = 0, so fg = 0 everywhere. Background:
    # all four query pixels, directions (1,0), (0,1), (1,0), (0,1). With c1, c2 the cosines of a
    # support pixel with (1, 0) and (0, 1): bg = (20 c1 e^(20 c1) + 20 c2 e^(20 c2)) / (e^(20 c1) + e^(20 c2)).
    b1 = 20 * sigmoid(20)                 # support pixels (1, 0) and (0, 1)
    b2 = 12 + 4 * sigmoid(4)              # support pixels (3, 4) and (4, 3)
    # Cross-entropy of a pixel: label 0 -> softplus(fg - bg) = softplus(-bg); label 1 -> softplus(bg).
    shot0 = (softplus(b1) + softplus(-b1) + softplus(-b2) + softplus(b2)) / 4     # labels 1, 0, 0, 1
    shot1 = (softplus(-b1) + softplus(b1) + softplus(b2) + softplus(-b2)) / 4     # labels 0, 1, 1, 0
    assert loss.item() == pytest.approx((shot0 + shot1) / 2, rel=1e-10)
    assert background_missing.tolist() == [False] and foreground_empty.tolist() == [True]
    loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()
    assert support.grad.abs().sum() > 0


def test_alignment_loss_with_an_all_foreground_prediction():
    support, query, query_logits = alignment_inputs([[1, 1], [1, 1]])
    loss, background_missing, foreground_empty = alignment_loss(support, SUPPORT_MASKS, query, query_logits, (1, 1))
    # No background prototype: bg = 0. Foreground: 2 x 2 full -> local (1,0), (0,1), (2,0), (0,2)
    # plus the global (3, 3) / (4 + 1e-5), direction (1, 1) / sqrt 2.
    def fg(c1, c2):
        d = [20 * c1, 20 * c2, 20 * c1, 20 * c2, 20 * (c1 + c2) / math.sqrt(2)]
        return sum(math.exp(x) * x for x in d) / sum(math.exp(x) for x in d)
    f1, f2 = fg(1.0, 0.0), fg(0.6, 0.8)   # fg(0, 1) = fg(1, 0) and fg(0.8, 0.6) = fg(0.6, 0.8) by symmetry
    shot0 = (softplus(-f1) + softplus(f1) + softplus(f2) + softplus(-f2)) / 4
    shot1 = (softplus(f1) + softplus(-f1) + softplus(-f2) + softplus(f2)) / 4
    assert loss.item() == pytest.approx((shot0 + shot1) / 2, rel=1e-10)
    assert background_missing.tolist() == [True] and foreground_empty.tolist() == [False]
    loss.backward()
    assert torch.isfinite(support.grad).all() and torch.isfinite(query.grad).all()


def test_alignment_loss_averages_over_queries():
    support, query, logits_fg = alignment_inputs([[1, 0], [1, 0]])
    _, _, logits_empty = alignment_inputs([[0, 0], [0, 0]])
    one = alignment_loss(support, SUPPORT_MASKS, query, logits_fg, (1, 1))[0]
    other = alignment_loss(support, SUPPORT_MASKS, query, logits_empty, (1, 1))[0]
    both, missing, empty = alignment_loss(support, SUPPORT_MASKS, torch.cat([query, query]),
                                          torch.cat([logits_fg, logits_empty]), (1, 1))
    assert both.item() == pytest.approx((one.item() + other.item()) / 2, rel=1e-12)
    assert empty.tolist() == [False, True]


# -- the encoder --------------------------------------------------------------------------------------
def test_encoder_output_size(model):
    assert deeplab_feature_size(33, 33) == (5, 5)
    assert deeplab_feature_size(128, 128) == (16, 16)
    assert deeplab_feature_size(256, 256) == (32, 32)
    assert deeplab_feature_size(257, 257) == (33, 33)
    with torch.no_grad():
        for side, features in ((33, 5), (128, 16)):    # 256 -> 32: the arithmetic above (4 s on a CPU)
            assert model.encoder(torch.randn(1, 3, side, side)).shape == (1, 256, features, features)
    assert model.image_encoder() is model.encoder
    assert model.pretrained_tensors_loaded == 0


# -- the registry ---------------------------------------------------------------------------------------
def test_built_through_the_registry():
    torch.manual_seed(0)
    net = build_model("ssl_alpnet", [33, 33])
    assert isinstance(net, ALPNet) and net.image_size == (33, 33) and net.feature_size == (5, 5)
    assert get_model("ssl_alpnet").builder is ssl_alpnet
    assert resolve_model_options("ssl_alpnet") == {"zero_init_residual": False}
    assert resolve_model_options("ssl_alpnet", {"zero_init_residual": True}) == {"zero_init_residual": True}
    assert any(block.bn3.weight.abs().sum() > 0 for block in net.modules() if isinstance(block, Bottleneck))


def test_zero_init_residual_option():
    net = build_model("ssl_alpnet", [33, 33], options={"zero_init_residual": True})
    blocks = [block for block in net.modules() if isinstance(block, Bottleneck)]
    assert len(blocks) == 33 and all(block.bn3.weight.abs().sum() == 0 for block in blocks)


def test_unknown_or_mistyped_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"model_options\.shots: model 'ssl_alpnet' has no option 'shots'"):
        resolve_model_options("ssl_alpnet", {"shots": 2})
    with pytest.raises(ValueError, match=r"model_options\.zero_init_residual=1 must be True or False"):
        resolve_model_options("ssl_alpnet", {"zero_init_residual": 1})


# -- the whole model ------------------------------------------------------------------------------------
def test_forward_shapes_and_probabilities(model):
    support, masks, queries, _ = episode(2, 3)
    with torch.no_grad():
        probs, losses = model(support, masks, queries)
    assert probs.shape == (3, 2, *SIZE) and probs.dtype == torch.float32 and losses == {}
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, *SIZE))
    assert 0.01 < probs[:, 1].mean() < 0.99     # calibrated: not saturated


def test_forward_wiring_in_eval_mode(model):
    """probs and losses recomputed from the encoder's features with the module's formulas: one
    encoder pass, the evaluation window (2 x 2) for the episode, the training window (1 x 1 at
    5 x 5 features) for the alignment."""
    support, masks, queries, labels = episode(2, 1, seed=3)
    labels[0, 0, 0] = 255
    with torch.no_grad():
        probs, losses = model(support, masks, queries, labels)
        features = model.encoder(torch.cat([support, queries]))
    fg_masks = resize_masks(masks, (5, 5))
    prototypes = episode_prototypes(features[:2], fg_masks, resize_masks(1.0 - masks, (5, 5)), (2, 2))
    scores = class_scores(features[2:], prototypes)
    logits = torch.nn.functional.interpolate(scores, size=SIZE, mode="bilinear", align_corners=False)
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1), atol=1e-5, rtol=1e-4)
    # Query loss from the probabilities: sum over counted pixels of w_y (-log p_y) / sum of w_y.
    keep = labels != 255
    weights = torch.where(labels == 1, 1.0, 0.05)[keep]
    nll = -probs.gather(1, labels.clamp(max=1)[:, None])[:, 0].log()[keep]
    assert losses["query_loss"].item() == pytest.approx((weights * nll).sum().item() / weights.sum().item(),
                                                        rel=1e-4)
    align = alignment_loss(features[:2], masks, features[2:], logits, (1, 1))[0]
    assert losses["align_loss"].item() == pytest.approx(align.item(), rel=1e-4)


def test_training_forward_losses_are_finite_and_reach_the_encoder(model):
    net = copy.deepcopy(model).train()
    support, masks, queries, labels = episode(1, 2, seed=4)
    probs, losses = net(support, masks, queries, labels)
    assert list(losses) == ["query_loss", "align_loss"]
    for value in losses.values():
        assert value.dim() == 0 and value.dtype == torch.float32 and torch.isfinite(value)
    (losses["query_loss"] + losses["align_loss"]).backward()
    for parameter in (net.encoder.backbone.conv1.weight, net.encoder.backbone.layer4[2].conv3.weight,
                      net.encoder.reduce.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
        assert parameter.grad.abs().sum() > 0


def test_predict_equals_eval_forward_and_restores_the_mode(model):
    support, masks, queries, _ = episode(2, 2, seed=6)
    with torch.no_grad():
        probs, _ = model(support, masks, queries)
    model.train()
    try:
        foreground = model.predict(support, masks, queries)
        assert model.training, "predict must restore training mode"
    finally:
        model.eval()
    assert foreground.shape == (2, *SIZE)
    assert 0.01 < foreground.mean() < 0.99     # not saturated, so the comparison means something
    torch.testing.assert_close(foreground, probs[:, 1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.predict(support, masks, queries, batch_size=2), foreground, atol=1e-5, rtol=1e-4)
    assert not model.training
    assert model.default_batch_size(torch.device("cpu")) == 1
    assert model.default_batch_size(torch.device("cuda")) == 8
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            model.predict(support, masks, queries, batch_size=bad)


def test_bfloat16_autocast_scores_in_float32(model):
    support, masks, queries, labels = episode(1, 1, seed=7)
    with torch.no_grad():
        reference, _ = model(support, masks, queries)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            probs, losses = model(support, masks, queries, labels)
            foreground = model.predict(support, masks, queries)
    assert probs.dtype == torch.float32 and foreground.dtype == torch.float32
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in losses.values())
    assert (probs[:, 1] - reference[:, 1]).abs().mean() < 0.1


def test_input_checks(model):
    support, masks, queries, labels = episode(1, 1)
    with pytest.raises(ValueError, match=r"support_masks must be \[K,H,W\]"):
        model(support, masks[0], queries)
    with pytest.raises(ValueError, match="built for image_size"):
        model(support, masks, torch.randn(1, 3, 32, 33))
    with pytest.raises(ValueError, match=r"query_images must be \[N,3,H,W\]"):
        model(support, masks, torch.randn(1, 1, *SIZE))
    with pytest.raises(ValueError, match=r"support_images must be \[N,3,H,W\] with N >= 1"):
        model.predict(support[:0], masks[:0], queries)
    with pytest.raises(ValueError, match=r"query_labels must be \[Q,H,W\]"):
        model(support, masks, queries, labels[0])
    with pytest.raises(ValueError, match="image_size must be"):
        ALPNet(image_size=(33,))


# -- pretrained backbone ----------------------------------------------------------------------------------
def test_imagenet_format_loads_every_backbone_tensor(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet101().state_dict()
    path = tmp_path / "resnet101-63fe2227.pth"
    torch.save(state, path)
    net = ssl_alpnet(SIZE, str(path))
    expected = {name: value for name, value in state.items() if not name.startswith("fc.")}
    assert net.pretrained_tensors_loaded == len(expected)
    loaded = net.encoder.backbone.state_dict()
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name
