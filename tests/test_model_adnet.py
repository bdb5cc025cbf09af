"""ADNet (docs/protocol.md section 15): known answers worked out by hand on tiny tensors for
its prototype (align_corners=False resizing, eps 1e-5, the mean over shots), its score
S = -20 cos, the scalar threshold T (initially -10) and P = 1 - sigmoid(0.5 (S - T)) upsampled
with align_corners=True, its losses (weighted query NLL with ignore index 255, the alignment
loss on the feature-resolution pseudo-mask, exactly 0 when that is empty, and T / 20); then the
real network on small images: the encoder's output stride, the registry, `predict` against
`forward`, gradients, and pretrained weights in the DeepLabV3 format.

Every expected value is written out from the formula (literal numbers or a few lines of
arithmetic next to it), never read from the code's own constants."""
import copy
import importlib
import math

import pytest
import torch
import torchvision
from torch import nn

from fafnet.models import ADNet, build_model, get_model, resolve_model_options
from fafnet.models.adnet import (alignment_loss, clamped_nll_ignore, foreground_at_feature_resolution,
                                 masked_average_prototype, upsample_foreground)
from fafnet.models.deeplab_encoder import deeplab_feature_size

adnet_module = importlib.import_module("fafnet.models.adnet")   # the package's `adnet` is the builder

SIZE = (33, 33)   # -> 5 x 5 features


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def feature_map(pixels, height=2, width=2):
    """[C, h, w] (float64) from row-major pixel vectors."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(-1, height, width)


def upsample_aligned(grid, size):
    """Bilinear 2 x 2 -> size x size with aligned corners: output pixel i samples i / (size - 1)."""
    (a, b), (c, d) = grid
    t = [i / (size - 1) for i in range(size)]
    return [[(1 - y) * (1 - x) * a + (1 - y) * x * b + y * (1 - x) * c + y * x * d for x in t] for y in t]


def nll(foreground, labels, weights=(1.0, 1.0), ignore=255):
    """sum(w_y * -ln p_y) / sum(w_y) over the pixels not labelled `ignore` (nested lists)."""
    total = norm = 0.0
    for p_row, y_row in zip(foreground, labels):
        for p, y in zip(p_row, y_row):
            if y == ignore:
                continue
            total += weights[y] * -math.log(p if y == 1 else 1.0 - p)
            norm += weights[y]
    return total / norm


# -- prototype: features resized with align_corners=False, p = sum(F M) / (sum(M) + 1e-5) ---------
def test_prototype_resizes_without_aligned_corners():
    # Channel 0 is F = 4 x + 8 y on the 2 x 2 grid, channel 1 is -2. align_corners=False puts the
    # 4 x 4 pixels at (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to 0, 0.25, 0.75, 1;
    # mask row 1 (y = 0.25) reads 2 + 4 (0, 0.25, 0.75, 1) = 2, 3, 5, 6, which sums to 16.
    # (align_corners=True would give 56 / 3.)
    features = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]], [[-2.0, -2.0], [-2.0, -2.0]]]], dtype=torch.float64)
    mask = torch.zeros(1, 4, 4, dtype=torch.float64)
    mask[0, 1, :] = 1.0
    expected = torch.tensor([[16.0 / (4.0 + 1e-5), -8.0 / (4.0 + 1e-5)]], dtype=torch.float64)
    torch.testing.assert_close(masked_average_prototype(features, mask), expected, atol=1e-12, rtol=0)


def test_prototype_eps_is_1e_minus_5():
    features = torch.tensor([[[[6.0, 6.0], [6.0, 6.0]], [[-2.0, -2.0], [-2.0, -2.0]]]], dtype=torch.float64)
    mask = torch.zeros(1, 2, 2, dtype=torch.float64)
    mask[0, 1, 1] = 1e-5
    # sum(F M) = 1e-5 F, sum(M) + eps = 2e-5: exactly half of the feature vector.
    torch.testing.assert_close(masked_average_prototype(features, mask),
                               torch.tensor([[3.0, -1.0]], dtype=torch.float64), atol=1e-12, rtol=0)


def test_prototype_of_k_shots_is_the_mean():
    features = torch.stack([feature_map([(2.0, 0.0)] * 4), feature_map([(0.0, 4.0)] * 4)])
    masks = torch.ones(2, 2, 2, dtype=torch.float64)
    # Each shot: 4 F / (4 + 1e-5); the mean of the two.
    scale = 4.0 / (4.0 + 1e-5)
    expected = torch.tensor([[scale * 1.0, scale * 2.0]], dtype=torch.float64)
    torch.testing.assert_close(ADNet.support_prototype(None, features, masks), expected, atol=1e-12, rtol=0)


# -- prediction: P = 1 - sigmoid(0.5 (-20 cos - T)), upsampled with aligned corners ----------------
# Prototype (3, 4); the four feature pixels (row-major) have cosine 1, 0, -1 and 0.96 with it.
PROTOTYPE = (3.0, 4.0)
PIXELS = ((3.0, 4.0), (4.0, -3.0), (-3.0, -4.0), (4.0, 3.0))
# T = 2: S = -20 cos = (-20, 0, 20, -19.2); S - T = (-22, -2, 18, -21.2);
# P = 1 - sigmoid(0.5 (S - T)) = sigmoid(11), sigmoid(1), sigmoid(-9), sigmoid(10.6).
P_FEATURE = ((sigmoid(11.0), sigmoid(1.0)), (sigmoid(-9.0), sigmoid(10.6)))


def test_prediction_formula_on_the_feature_grid():
    fg = foreground_at_feature_resolution(feature_map(PIXELS)[None], torch.tensor([PROTOTYPE], dtype=torch.float64),
                                          torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(fg, torch.tensor([P_FEATURE], dtype=torch.float64), atol=1e-12, rtol=0)


def test_prediction_is_upsampled_bilinearly_with_aligned_corners():
    up = upsample_foreground(torch.tensor([P_FEATURE], dtype=torch.float64), (4, 4))
    torch.testing.assert_close(up, torch.tensor([upsample_aligned(P_FEATURE, 4)], dtype=torch.float64),
                               atol=1e-12, rtol=0)


# -- query loss: weights 0.1 / 1.0, ignore index 255, float32-eps clamp ----------------------------
def test_query_loss_class_weights_and_ignore_index():
    fg = torch.tensor([[[0.2, 0.25, 0.9]]])          # background 0.8, foreground 0.25, ignored
    probs = torch.stack([1 - fg, fg], dim=1)
    # (0.1 * -ln 0.8 + 1.0 * -ln 0.25) / (0.1 + 1.0); the third pixel is ignored.
    loss = clamped_nll_ignore(probs, torch.tensor([[[0, 1, 255]]]), (0.1, 1.0))
    assert loss.item() == pytest.approx(1.280553378410283, rel=1e-6)


def test_query_loss_clamps_at_the_float32_machine_eps():
    fg = torch.tensor([[[0.0, 1.0]]])                # the true class has probability 0 twice
    probs = torch.stack([1 - fg, fg], dim=1)
    # -ln(2^-23) = 23 ln 2 on both pixels, whatever the weights.
    assert clamped_nll_ignore(probs, torch.tensor([[[1, 0]]]), (0.1, 1.0)).item() == pytest.approx(
        15.942385152878742, rel=1e-6)


# -- the alignment loss on the feature-resolution pseudo-mask -------------------------------------
SHOT_A = ((1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (1.0, 0.0))
SHOT_B = ((0.0, 1.0), (2.0, 5.0), (1.0, 0.0), (-1.0, 2.0))
QUERY_1 = ((2.0, 0.0), (5.0, 5.0), (0.0, 2.0), (-3.0, 1.0))
QUERY_2 = ((1.0, 2.0), (3.0, 1.0), (0.0, 1.0), (1.0, -1.0))
MASK_A = ((1, 0), (0, 1))
MASK_B = ((0, 1), (1, 1))


def cosine(u, v):
    return (u[0] * v[0] + u[1] * v[1]) / math.hypot(*u) / math.hypot(*v)


def support_nll(shot, mask, prototype, threshold):
    """Unweighted NLL of one 2 x 2 support mask under P = sigmoid(10 cos + T / 2) (2 -> 2 with
    aligned corners is the identity)."""
    p = [sigmoid(10.0 * cosine(pixel, prototype) + 0.5 * threshold) for pixel in shot]
    return nll(((p[0], p[1]), (p[2], p[3])), mask)


def test_alignment_loss_by_hand_two_shots_two_queries_one_empty():
    threshold = 3.0
    supports = torch.stack([feature_map(SHOT_A), feature_map(SHOT_B)]).requires_grad_()
    masks = torch.tensor([MASK_A, MASK_B], dtype=torch.float64)
    queries = torch.stack([feature_map(QUERY_1), feature_map(QUERY_2)]).requires_grad_()
    # Query 1's P on the feature grid -> pseudo-mask ((1, 0), (1, 0)); query 2's is empty.
    query_fg = torch.tensor([[[0.9, 0.1], [0.8, 0.3]], [[0.2, 0.4], [0.1, 0.49]]], dtype=torch.float64)
    loss = alignment_loss(supports, masks, queries, query_fg, torch.tensor(threshold, dtype=torch.float64))
    # Query 1's prototype: ((2, 0) + (0, 2)) / (2 + 1e-5), the direction (1, 1). Each shot's mean
    # NLL, summed over the K = 2 shots, divided by K * ways = 2; query 2 adds 0; mean over Q = 2.
    prototype = (1.0, 1.0)
    per_shot = [support_nll(SHOT_A, MASK_A, prototype, threshold), support_nll(SHOT_B, MASK_B, prototype, threshold)]
    assert loss.item() == pytest.approx((sum(per_shot) / 2 + 0.0) / 2, rel=1e-12)
    loss.backward()
    assert torch.equal(queries.grad[1], torch.zeros_like(queries.grad[1])), "the empty query must get no gradient"
    assert queries.grad[0].abs().sum() > 0 and supports.grad.abs().sum() > 0


def test_empty_pseudo_mask_gives_exactly_zero_loss_and_gradient():
    supports = torch.stack([feature_map(SHOT_A)]).requires_grad_()
    masks = torch.tensor([MASK_A], dtype=torch.float64)
    queries = torch.stack([feature_map(QUERY_1)]).requires_grad_()
    threshold = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    # P <= 0.5 everywhere (0.5 itself is a tie, which the argmax gives to the background).
    query_fg = torch.tensor([[[0.2, 0.5], [0.1, 0.0]]], dtype=torch.float64)
    loss = alignment_loss(supports, masks, queries, query_fg, threshold)
    assert loss.item() == 0.0
    loss.backward()
    for grad in (supports.grad, queries.grad, threshold.grad):
        assert torch.equal(grad, torch.zeros_like(grad))


# -- the whole forward with a fixed feature map instead of the ResNet -------------------------------
class FixedEncoder(nn.Module):
    """Stands in for the DeepLab encoder: returns the features it is given (a parameter, so that
    gradients can be checked), whatever the images."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.features = None
        self.pretrained_tensors_loaded = 0

    def forward(self, images):
        assert images.shape[0] == self.features.shape[0]
        return self.features


def model_on_features(monkeypatch, image_size, features):
    monkeypatch.setattr(adnet_module, "DeepLabResNet101Encoder", FixedEncoder)
    model = ADNet(image_size=image_size)
    model.encoder.features = nn.Parameter(features)
    return model


def test_forward_known_answer_with_fixed_features(monkeypatch):
    """K = 1, Q = 1, 4 x 4 images, 2 x 2 features with 2 channels, T = -4 (the same T for the
    query and the support predictions)."""
    support = ((1.0, 1.0), (1.0, 1.0), (1.0, -1.0), (-1.0, -1.0))
    query = ((2.0, 2.0), (1.0, -1.0), (0.0, 3.0), (-1.0, -1.0))
    model = model_on_features(monkeypatch, (4, 4), torch.stack([feature_map(support), feature_map(query)]))
    threshold = -4.0
    with torch.no_grad():
        model.threshold.fill_(threshold)
    support_mask = torch.zeros(1, 4, 4, dtype=torch.float64)
    support_mask[0, 0, :] = 1.0   # the top row: the prototype is along (1, 1)
    labels = [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]]
    images = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    probs, losses = model(images, support_mask, images, torch.tensor([labels]))

    # Query: cos with (1, 1) = 1, 0, 1/sqrt(2), -1; P = 1 - sigmoid(0.5 (-20 cos - T)) = sigmoid(10 cos + T/2).
    p_query = [sigmoid(10.0 * c + 0.5 * threshold) for c in (1.0, 0.0, 1.0 / math.sqrt(2.0), -1.0)]
    fg = upsample_aligned(((p_query[0], p_query[1]), (p_query[2], p_query[3])), 4)
    torch.testing.assert_close(probs[0, 1], torch.tensor(fg, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(probs[0, 0], 1.0 - torch.tensor(fg, dtype=torch.float64), atol=1e-12, rtol=0)
    assert list(losses) == ["query_loss", "align_loss", "threshold_loss"]
    assert all(value.dtype == torch.float32 and value.dim() == 0 for value in losses.values())
    assert losses["query_loss"].item() == pytest.approx(nll(fg, labels, weights=(0.1, 1.0)), rel=1e-6)

    # The pseudo-mask on the FEATURE grid is ((1, 0), (1, 0)) (P = sigmoid(8), sigmoid(-2),
    # sigmoid(5.07), sigmoid(-12)); the upsampled output's argmax would be another mask. Query
    # prototype: ((2, 2) + (0, 3)) / (2 + 1e-5), along (2, 5); support cos = (7, 7, -3, -7) / sqrt(58).
    p_support = [sigmoid(10.0 * c / math.sqrt(58.0) + 0.5 * threshold) for c in (7.0, 7.0, -3.0, -7.0)]
    support_fg = upsample_aligned(((p_support[0], p_support[1]), (p_support[2], p_support[3])), 4)
    support_labels = [[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert losses["align_loss"].item() == pytest.approx(nll(support_fg, support_labels), rel=1e-6)
    # t_loss_scaler * T / 20 with t_loss_scaler = 1.
    assert losses["threshold_loss"].item() == pytest.approx(-4.0 / 20.0, rel=1e-7)


def test_forward_without_labels_returns_no_losses(monkeypatch):
    model = model_on_features(monkeypatch, (4, 4), torch.randn(3, 2, 2, 2))
    probs, losses = model(torch.zeros(2, 3, 4, 4), torch.ones(2, 4, 4), torch.zeros(1, 3, 4, 4))
    assert probs.shape == (1, 2, 4, 4) and losses == {}


def test_probabilities_and_losses_are_float32_under_bfloat16_autocast(monkeypatch):
    torch.manual_seed(0)
    features = torch.randn(2, 4, 2, 2)
    model = model_on_features(monkeypatch, (4, 4), features)
    model.encoder.forward = lambda images: model.encoder.features.to(torch.bfloat16)   # a bf16 encoder
    images, mask, labels = torch.zeros(1, 3, 4, 4), torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.long)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        probs, losses = model(images, mask, images, labels)
    assert probs.dtype == torch.float32 and all(v.dtype == torch.float32 for v in losses.values())
    # Same numbers as float32 arithmetic on the bf16-rounded features.
    model.encoder.forward = lambda images: model.encoder.features.to(torch.bfloat16).float()
    expected, expected_losses = model(images, mask, images, labels)
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    for name, value in expected_losses.items():
        torch.testing.assert_close(losses[name], value, atol=1e-6, rtol=0)


def test_input_checks(monkeypatch):
    model = model_on_features(monkeypatch, (4, 4), torch.randn(2, 2, 2, 2))
    images, mask = torch.zeros(1, 3, 4, 4), torch.ones(1, 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        model(torch.zeros(1, 3, 5, 5), torch.ones(1, 5, 5), torch.zeros(1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\[N,3,H,W\]"):
        model(torch.zeros(1, 1, 4, 4), mask, images)
    with pytest.raises(ValueError, match="support_masks"):
        model(images, torch.ones(2, 4, 4), images)
    with pytest.raises(ValueError, match="query_labels"):
        model(images, mask, images, torch.ones(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(images, mask, images, batch_size=0)


# -- the real network on small images ------------------------------------------------------------
def calibrate_batchnorm(model: ADNet, images: torch.Tensor) -> ADNet:
    """BatchNorm running statistics from `images`, then eval mode (a random ResNet-101 with the
    default running statistics saturates every sigmoid in eval mode)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.encoder(images)
    return model.eval()


def episode(shots, queries, size=SIZE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(shots, 3, *size, generator=generator)
    query = torch.randn(queries, 3, *size, generator=generator)
    masks = torch.zeros(shots, *size)
    masks[:, size[0] // 4: 3 * size[0] // 4, size[1] // 4: 3 * size[1] // 4] = 1.0
    return support, masks, query


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("adnet", list(SIZE))
    return calibrate_batchnorm(net, torch.randn(4, 3, *SIZE))


def test_threshold_starts_at_minus_10_and_its_loss_is_t_over_20(model):
    assert model.threshold.shape == () and model.threshold.item() == -10.0
    support, masks, query = episode(1, 1)
    with torch.no_grad():
        _, losses = model(support, masks, query, torch.zeros(1, *SIZE, dtype=torch.long))
    assert losses["threshold_loss"].item() == -0.5   # -10 / 20


def test_encoder_output_stride_8_and_256_channels(model):
    assert deeplab_feature_size(33, 33) == (5, 5)      # 33 -> 17 -> 9 -> 5
    assert deeplab_feature_size(128, 128) == (16, 16)
    assert deeplab_feature_size(256, 256) == (32, 32)
    assert model.feature_size == (5, 5)
    with torch.no_grad():
        assert model.encoder(torch.zeros(1, 3, *SIZE)).shape == (1, 256, 5, 5)
        assert model.encoder(torch.zeros(1, 3, 64, 48)).shape == (1, 256, 8, 6)
    backbone = model.encoder.backbone   # layer3 and layer4 dilated instead of strided
    assert backbone.layer2[0].conv2.stride == (2, 2)
    assert backbone.layer3[0].conv2.stride == (1, 1) and backbone.layer3[1].conv2.dilation == (2, 2)
    assert backbone.layer4[0].conv2.stride == (1, 1) and backbone.layer4[1].conv2.dilation == (4, 4)
    reduce = model.encoder.reduce
    assert (reduce.in_channels, reduce.out_channels, reduce.kernel_size, reduce.bias) == (2048, 256, (1, 1), None)
    assert model.image_encoder() is model.encoder
    assert model.pretrained_tensors_loaded == 0


def test_registry_builds_adnet_with_its_options():
    entry = get_model("adnet")
    assert entry.description.startswith("ADNet")
    assert resolve_model_options("adnet") == {"zero_init_residual": False}
    assert resolve_model_options("adnet", {"zero_init_residual": True}) == {"zero_init_residual": True}
    with pytest.raises(ValueError, match=r"model_options\.icm.*'adnet'.*zero_init_residual"):
        resolve_model_options("adnet", {"icm": False})
    with pytest.raises(ValueError, match=r"model_options\.zero_init_residual"):
        resolve_model_options("adnet", {"zero_init_residual": 1})
    net = build_model("adnet", [33, 33], options={"zero_init_residual": True})
    assert isinstance(net, ADNet) and net.image_size == (33, 33)
    bn3 = [m.bn3.weight for m in net.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)]
    assert len(bn3) == 33 and all(torch.equal(w, torch.zeros_like(w)) for w in bn3)


def test_default_batch_size():
    assert ADNet.default_batch_size(None, torch.device("cpu")) == 1
    assert ADNet.default_batch_size(None, torch.device("cuda")) == 8


def test_predict_equals_eval_forward_and_restores_the_mode(model):
    # float64: batched and single-image convolutions may take different float32 algorithms
    # (relative differences ~1e-5 after 100 layers); in float64 any real difference shows.
    net = copy.deepcopy(model).double()
    support, masks, query = (x.double() for x in episode(1, 3))
    with torch.no_grad():
        expected = torch.cat([net(support, masks, query[i:i + 1])[0][:, 1] for i in range(3)])
    assert 0.0 < expected.min() and expected.max() < 1.0
    net.train()
    for batch_size in (None, 2):
        predicted = net.predict(support, masks, query, batch_size=batch_size)
        assert net.training, "predict must restore the training mode"
        assert predicted.shape == (3, *SIZE) and predicted.dtype == torch.float64 and not predicted.requires_grad
        torch.testing.assert_close(predicted, expected, atol=1e-9, rtol=1e-9)


def test_forward_losses_are_finite_and_gradients_reach_encoder_reduce_and_threshold(model):
    support, masks, query = episode(1, 1, seed=3)
    labels = torch.zeros(1, *SIZE, dtype=torch.long)
    labels[0, 8:24, 8:24] = 1
    labels[0, 0, :] = 255
    model.zero_grad()
    model.train()
    try:
        probs, losses = model(support, masks, query, labels)
    finally:
        model.eval()
    assert probs.shape == (1, 2, *SIZE)
    assert list(losses) == ["query_loss", "align_loss", "threshold_loss"]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, parameter in (("conv1", model.encoder.backbone.conv1.weight), ("reduce", model.encoder.reduce.weight),
                            ("threshold", model.threshold)):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    model.zero_grad()


# -- pretrained weights in the DeepLabV3 format ----------------------------------------------------
def test_deeplab_format_weights_load_every_backbone_tensor(tmp_path):
    torch.manual_seed(1)
    resnet_state = torchvision.models.resnet101().state_dict()
    state = {f"backbone.{k}": v for k, v in resnet_state.items() if not k.startswith("fc.")}
    state["classifier.4.weight"] = torch.zeros(21, 256, 1, 1)   # DeepLabV3's head: ignored
    path = tmp_path / "deeplabv3_resnet101.pth"
    torch.save(state, path)
    net = build_model("adnet", [33, 33], pretrained_weights=str(path))
    backbone = net.encoder.backbone.state_dict()
    assert net.pretrained_tensors_loaded == len(backbone) == len(resnet_state) - 2   # all but fc.weight, fc.bias
    for name, value in backbone.items():
        assert torch.equal(value, resnet_state[name]), name
