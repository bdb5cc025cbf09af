"""Known answers, worked out by hand, that pin the constants of the method's model, losses
and optimiser: the prediction's similarity scale 20 and threshold slope 0.5 with bilinear
align_corners=True upsampling, the masked-average-pooling eps 1e-5, the query-loss weights
0.1 / 1.0 and the float32-eps clamp, the alignment loss (mean over the K shots) and the MSE
prototype loss, the ICM's sqrt(C) scaling, 4 heads and residual p' = p + x, the AFF's spectrum
arithmetic and filter-generator structure, the encoder's dilation and initialisation, and the
release's SGD update.

Every expected value here is written out from the formula (literal numbers or a few lines of
arithmetic next to the formula they come from), never read from the code's own constants, so
changing one constant of the method makes a test here fail (tests/tools/check_constants_pinned.py
checks that)."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fafnet.models import AFF, ICM, FAFNet, apply_fourier_filters, masked_average_pooling, query_loss
from fafnet.models.modules import FourierFilterGenerator


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def segment_with(image_size, features, thresholds, prototypes):
    """FAFNet.segment on its own: it reads nothing from the network but the image size, so the
    prediction formula can be checked without building a ResNet."""
    return FAFNet.segment(SimpleNamespace(image_size=image_size), features, thresholds, prototypes)


@pytest.fixture(scope="module")
def net():
    """One small FAF-Net (33 x 33 images -> 9 x 9 features) for the structural checks."""
    torch.manual_seed(0)
    return FAFNet(image_size=(33, 33)).eval()


# -- prediction: P = 1 - sigmoid(0.5 * (-20 * cos - T)), upsampled bilinearly (align_corners) -------
# Prototype (3, 4); the four feature pixels (row-major) have cosine 1, 0, -1 and 0.96 with it.
PROTOTYPE = (3.0, 4.0)
PIXELS = ((3.0, 4.0), (4.0, -3.0), (-3.0, -4.0), (4.0, 3.0))
THRESHOLDS = ((-16.0, 2.0), (10.0, -20.0))
# d = -20 cos = (-20, 0, 20, -19.2); d - T = (-4, -2, 10, 0.8);
# P = 1 - sigmoid(0.5 (d - T)) = sigmoid(2), sigmoid(1), sigmoid(-5), sigmoid(-0.4):
P_FEATURE = ((0.8807970779778823, 0.7310585786300049), (0.0066928509242848554, 0.401312339887548))


def feature_map(pixels, height=2, width=2):
    """[1, C, h, w] from row-major pixel vectors."""
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, -1, height, width)


def test_prediction_formula_on_the_feature_grid():
    probs = segment_with((2, 2), feature_map(PIXELS), torch.tensor([[THRESHOLDS]], dtype=torch.float64),
                         torch.tensor([PROTOTYPE], dtype=torch.float64))
    torch.testing.assert_close(probs, torch.tensor([P_FEATURE], dtype=torch.float64), atol=1e-12, rtol=0)


def test_prediction_is_upsampled_bilinearly_with_aligned_corners():
    probs = segment_with((4, 4), feature_map(PIXELS), torch.tensor([[THRESHOLDS]], dtype=torch.float64),
                         torch.tensor([PROTOTYPE], dtype=torch.float64))[0]
    (a, b), (c, d) = P_FEATURE
    # align_corners=True on 2 -> 4: output pixel i samples the feature grid at i / 3, so the
    # corners are the feature pixels and the rest is bilinear in between.
    t = (0.0, 1 / 3, 2 / 3, 1.0)
    expected = [[(1 - y) * (1 - x) * a + (1 - y) * x * b + y * (1 - x) * c + y * x * d for x in t] for y in t]
    torch.testing.assert_close(probs, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_prediction_of_a_perfect_match_at_threshold_zero():
    # With the threshold map at 0 and a feature map equal to the prototype everywhere, every
    # pixel has d = -20: P = 1 - sigmoid(-10) in float32.
    fg = segment_with((4, 4), torch.ones(1, 5, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 5))
    torch.testing.assert_close(fg, torch.full((1, 4, 4), 1.0 - sigmoid(-10.0)))


# -- masked average pooling: p = sum(F * M) / (sum(M) + 1e-5) ---------------------------------------
def test_masked_average_pooling_eps_is_1e_minus_5():
    features = torch.tensor([[[[6.0, 6.0], [6.0, 6.0]], [[-2.0, -2.0], [-2.0, -2.0]]]], dtype=torch.float64)
    mask = torch.zeros(1, 2, 2, dtype=torch.float64)
    mask[0, 1, 1] = 1e-5
    # sum(F M) = 1e-5 * F, sum(M) + eps = 2e-5: exactly half of the feature vector.
    torch.testing.assert_close(masked_average_pooling(features, mask),
                               torch.tensor([[3.0, -1.0]], dtype=torch.float64), atol=1e-12, rtol=0)


def test_masked_average_pooling_upsamples_with_aligned_corners():
    # F = 4 x + 8 y on the 2 x 2 grid; aligned corners put the 4 x 4 pixels at x, y = i / 3,
    # so mask row 1 (y = 1/3) reads 8/3 + 4 (0, 1/3, 2/3, 1), which sums to 32/3 + 8 = 56/3.
    features = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]], dtype=torch.float64)
    mask = torch.zeros(1, 4, 4, dtype=torch.float64)
    mask[0, 1, :] = 1.0
    expected = (56.0 / 3.0) / (4.0 + 1e-5)
    assert masked_average_pooling(features, mask).item() == pytest.approx(expected, rel=1e-12)


# -- query loss: weights 0.1 / 1.0, probabilities clamped to the float32 eps ------------------------
def test_query_loss_class_weights():
    fg = torch.tensor([[[0.2, 0.25]]])                   # pixel 0: background 0.8; pixel 1: fg 0.25
    probs = torch.stack([1 - fg, fg], dim=1)
    # (0.1 * -ln 0.8 + 1.0 * -ln 0.25) / (0.1 + 1.0)
    assert query_loss(probs, torch.tensor([[[0, 1]]])).item() == pytest.approx(1.280553378410283, rel=1e-6)


def test_query_loss_clamps_at_the_float32_machine_eps():
    fg = torch.tensor([[[0.0, 1.0]]])                    # the true class has probability 0 twice
    probs = torch.stack([1 - fg, fg], dim=1)
    # -ln(2^-23) = 23 ln 2 on both pixels, whatever the weights.
    assert query_loss(probs, torch.tensor([[[1, 0]]])).item() == pytest.approx(15.942385152878742, rel=1e-6)


# -- alignment loss (mean NLL over the K support masks) and MSE prototype loss ----------------------
def test_alignment_and_prototype_losses_by_hand():
    """Two shots, one query, 2 x 2 images = features; the ICM is replaced by the identity so that
    only the loss arithmetic remains."""
    stub = SimpleNamespace(image_size=(2, 2), icm=None)       # FAF-Net without its ICM (icm=False)
    stub.refine = lambda *args: FAFNet.refine(stub, *args)
    stub.segment = lambda *args: FAFNet.segment(stub, *args)
    f64 = dict(dtype=torch.float64)
    query_features = feature_map(((3.0, 4.0), (1.0, 0.0), (6.0, 8.0), (0.0, 1.0)))
    fg = torch.tensor([[[0.9, 0.2], [0.7, 0.1]]], **f64)  # predicted foreground: pixels 0 and 2
    query_probs = torch.stack([1 - fg, fg], dim=1)
    support_features = torch.cat([feature_map(PIXELS),
                                  feature_map(((0.0, 5.0), (5.0, 0.0), (-4.0, 3.0), (3.0, 4.0)))])
    support_thresholds = torch.tensor([[THRESHOLDS], [((-14.0, -10.0), (0.0, -22.0))]], **f64)
    support_masks = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 1]]], **f64)
    target = torch.tensor([[4.0, 6.0]], **f64)           # refined support prototype of the main path

    align, proto = FAFNet.alignment_losses(stub, support_features, support_thresholds, support_masks,
                                           query_features, query_probs, target)

    # Query prototype: ((3, 4) + (6, 8)) / (2 + 1e-5), direction (3, 4): the cosines are those of
    # PIXELS for shot 0 and (0.8, 0.6, 0, 1) for shot 1, so d - T is (-4, -2, 10, 0.8) and
    # (-2, -2, 0, 2); P = sigmoid(-0.5 (d - T)); NLL of the masks, mean over the 8 pixels
    # (per-shot mean, divided by K = 2).
    nll = [-math.log(sigmoid(2)), -math.log(sigmoid(1)), -math.log(1 - sigmoid(-5)), -math.log(1 - sigmoid(-0.4)),
           -math.log(sigmoid(1)), -math.log(1 - sigmoid(1)), -math.log(0.5), -math.log(sigmoid(-1))]
    assert align.item() == pytest.approx(sum(nll) / 8, rel=1e-10)
    q = (9.0 / (2 + 1e-5), 12.0 / (2 + 1e-5))
    assert proto.item() == pytest.approx(((q[0] - 4.0) ** 2 + (q[1] - 6.0) ** 2) / 2, rel=1e-10)


# -- ICM: logits q.k / sqrt(C), 4 heads, p' = p + W_o(heads) + b_o -----------------------------------
def set_linear(layer: nn.Linear, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.tensor(bias, dtype=layer.bias.dtype))


def test_icm_by_hand():
    icm = ICM(channels=2, heads=2, feature_size=(1, 2)).double()
    set_linear(icm.query_proj, [[1, 0], [0, 1], [2, 0], [0, 2]], [0, 0, 0, 0])   # head 0: p, head 1: 2p
    set_linear(icm.key_proj, [[1, 0], [0, 1], [1, 0], [0, 1]], [0, 0, 0, 0])     # keys = pixels
    set_linear(icm.value_proj, [[1, 0], [0, 1], [1, 0], [0, 1]], [0, 0, 0, 0])   # values = pixels
    set_linear(icm.out_proj, [[1, 0, 1, 0], [0, 1, 0, 1]], [0.5, -0.5])          # sum of the heads + b
    for branch in (icm.aff.amplitude, icm.aff.phase):                            # identity filters
        nn.init.zeros_(branch.spectrum_linear.weight)
        nn.init.ones_(branch.spectrum_linear.bias)
    prototype = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    features = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]], dtype=torch.float64)  # pixels (2, 0), (0, 2)
    # Head 0 logits (2, 0) / sqrt(2), head 1 (4, 0) / sqrt(2): softmax weight of pixel 0 is
    # sigmoid(sqrt 2) and sigmoid(2 sqrt 2); each head pools 2 * (w0, 1 - w0).
    w0, w1 = sigmoid(math.sqrt(2)), sigmoid(2 * math.sqrt(2))
    x = (2 * w0 + 2 * w1 + 0.5, 2 * (1 - w0) + 2 * (1 - w1) - 0.5)
    expected = torch.tensor([[1.0 + x[0], 0.0 + x[1]]], dtype=torch.float64)
    torch.testing.assert_close(icm(prototype, features), expected, atol=1e-6, rtol=0)


def test_attention_logits_are_scaled_by_sqrt_of_the_channels():
    icm = ICM(channels=4, heads=1, feature_size=(1, 1)).double()
    set_linear(icm.query_proj, torch.eye(4).tolist(), [0, 0, 0, 0])
    set_linear(icm.key_proj, torch.eye(4).tolist(), [0, 0, 0, 1])    # key bias adds q_3 = 1
    prototype = torch.tensor([[1.0, 2.0, 0.0, 1.0]], dtype=torch.float64)
    pixels = torch.tensor([[[3.0], [1.0], [5.0], [0.0]]], dtype=torch.float64)   # [1, C, hw = 1]
    # (q . g + q . b_k) / sqrt(4) = (3 + 2 + 0 + 0 + 1) / 2
    assert icm.attention_logits(prototype, pixels).item() == pytest.approx(3.0, rel=1e-12)


def test_four_attention_heads_by_default(net):
    assert ICM(channels=8, feature_size=(3, 3)).heads == 4
    assert AFF(channels=8, feature_size=(3, 3)).phase.conv_heads.out_channels == 4
    assert net.icm.heads == 4
    assert net.icm.query_proj.out_features == 4 * 512 and net.icm.out_proj.in_features == 4 * 512
    for branch in (net.icm.aff.amplitude, net.icm.aff.phase):
        assert branch.conv_heads.out_channels == 4


# -- AFF: S = rfft2(A) (norm backward); |S| * a, angle(S) * p; A' = irfft2(., s=(h, w)) ---------------
def delta(height, width, row, col):
    attention = torch.zeros(1, 1, height, width, dtype=torch.float64)
    attention[..., row, col] = 1.0
    return attention


def filters(height, width, amplitude, phase):
    shape = (1, 1, height, width // 2 + 1)
    return (torch.full(shape, amplitude, dtype=torch.float64), torch.full(shape, phase, dtype=torch.float64))


def test_phase_filter_multiplies_the_phase():
    attention = delta(3, 4, 1, 1)
    # The spectrum of a unit delta has amplitude 1 everywhere (norm "backward").
    # Phase x 0: a flat real spectrum, the delta moves to the origin.
    torch.testing.assert_close(apply_fourier_filters(attention, *filters(3, 4, 1.0, 0.0)), delta(3, 4, 0, 0))
    # Phase x -1: the conjugate spectrum, the map mirrored about the origin along both axes.
    torch.testing.assert_close(apply_fourier_filters(attention, *filters(3, 4, 1.0, -1.0)), delta(3, 4, 2, 3))


def test_half_phase_on_a_1x4_delta():
    # A = (0, 1, 0, 0): S = (1, -i, -1), phases (0, -pi/2, pi) -> (0, -pi/4, pi/2):
    # S' = (1, (1 - i)/sqrt 2, i); the Nyquist term is read as its real part, 0, so
    # A'[n] = (1 + 2 Re(S'_1 i^n)) / 4 = ((1 + sqrt 2) / 4) x 2, ((1 - sqrt 2) / 4) x 2.
    out = apply_fourier_filters(delta(1, 4, 0, 1), *filters(1, 4, 1.0, 0.5))
    high, low = (1 + math.sqrt(2)) / 4, (1 - math.sqrt(2)) / 4
    torch.testing.assert_close(out, torch.tensor([[[[high, high, low, low]]]], dtype=torch.float64))


def test_amplitude_filter_multiplies_the_amplitude():
    attention = delta(3, 4, 1, 2) - 0.5 * delta(3, 4, 0, 0)
    torch.testing.assert_close(apply_fourier_filters(attention, *filters(3, 4, 3.0, 1.0)), 3.0 * attention)
    # Keeping only the zero frequency (amplitude 1, everything else 0) leaves the mean: 0.5 / 12.
    amplitude, phase = filters(3, 4, 0.0, 1.0)
    amplitude[..., 0, 0] = 1.0
    torch.testing.assert_close(apply_fourier_filters(attention, amplitude, phase),
                               torch.full_like(attention, 0.5 / 12))


def test_filter_generator_structure_by_hand():
    """a1 = conv1x1(G); a2 = conv3x3(relu(a1), padding 1) + a1; a3 = relu(conv1x1_{C->m}(relu(a2)));
    filter = Linear(h*w -> h*(w//2+1))(a3 flattened row-major)."""
    generator = FourierFilterGenerator(channels=1, heads=2, feature_size=(2, 3)).double()
    assert generator.conv_in.kernel_size == (1, 1) and generator.conv_heads.kernel_size == (1, 1)
    assert all(conv.bias is None for conv in (generator.conv_in, generator.conv_mid, generator.conv_heads))
    assert (generator.spectrum_linear.in_features, generator.spectrum_linear.out_features) == (6, 4)
    with torch.no_grad():
        generator.conv_in.weight.fill_(2.0)
        generator.conv_mid.weight.fill_(1.0)
        generator.conv_mid.weight[0, 0, 1, 1] = -3.0        # neighbourhood sum minus 4 x centre
        generator.conv_heads.weight[0].fill_(0.5)
        generator.conv_heads.weight[1].fill_(-0.5)
    set_linear(generator.spectrum_linear, [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                                           [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1]], [0.1, 0.2, 0.3, 0.4])
    features = torch.tensor([[[[1.0, -2.0, 3.0], [-1.0, 2.0, -3.0]]]], dtype=torch.float64)
    # a1 = [[2, -4, 6], [-2, 4, -6]], relu(a1) = [[2, 0, 6], [0, 4, 0]]
    # 3x3 sums with zero padding [[6, 12, 10], [6, 12, 10]], minus 4 x centre: [[-2, 12, -14], [6, -4, 10]]
    # a2 = that + a1 = [[0, 8, -8], [4, 0, 4]]; relu(a2) = [[0, 8, 0], [4, 0, 4]]
    # head 0: relu(0.5 x) = [[0, 4, 0], [2, 0, 2]]; head 1: relu(-0.5 x) = 0 (without the ReLU
    # on a2 it would be 4 at element 2, which the Linear reads)
    # Linear picks elements 1, 2, 3, 5 (row-major) and adds the bias.
    expected = torch.tensor([[[[4.1, 0.2], [2.3, 2.4]], [[0.1, 0.2], [0.3, 0.4]]]], dtype=torch.float64)
    torch.testing.assert_close(generator(features), expected)


def test_filter_linear_is_sized_from_the_feature_map(net):
    # 33 x 33 images -> 9 x 9 features: Linear(81 -> 9 * 5); a 7-wide map gives 7 // 2 + 1 = 4.
    for branch in (net.icm.aff.amplitude, net.icm.aff.phase):
        assert (branch.spectrum_linear.in_features, branch.spectrum_linear.out_features) == (81, 45)
    odd = AFF(channels=4, heads=4, feature_size=(5, 7)).amplitude.spectrum_linear
    assert (odd.in_features, odd.out_features) == (35, 20)


# -- encoder: dilated layer2 / layer3, kaiming fan_out initialisation, BatchNorm 1 / 0 ----------------
def test_layer3_runs_at_a_quarter_of_the_input_resolution(net):
    with torch.no_grad():
        f3 = net.encoder.layer3_features(torch.zeros(1, 3, 17, 17))
    assert f3.shape == (1, 1024, 5, 5)                        # 17 -> conv1 9 -> max-pool 5
    backbone = net.encoder.backbone
    # replace_stride_with_dilation = [True, True, False]: layer2 and layer3 trade their stride 2
    # for dilation 2 and 4 (their first block keeps the previous dilation); layer4 keeps stride 2.
    assert backbone.layer2[0].conv2.stride == (1, 1) and backbone.layer2[1].conv2.dilation == (2, 2)
    assert backbone.layer3[0].conv2.stride == (1, 1) and backbone.layer3[0].conv2.dilation == (2, 2)
    assert backbone.layer3[1].conv2.dilation == (4, 4)
    assert backbone.layer4[0].conv2.stride == (2, 2) and backbone.layer4[1].conv2.dilation == (4, 4)


def test_convolutions_are_kaiming_normal_fan_out(net):
    encoder = net.encoder
    # kaiming_normal_(fan_out, relu): std = sqrt(2 / fan_out); fan_out = out_channels x k x k.
    for conv, fan_out in ((encoder.reduce_features, 512), (encoder.threshold_head[0], 512),
                          (encoder.reduce_layer4, 512), (encoder.backbone.layer3[5].conv2, 256 * 9)):
        weight = conv.weight.detach().double()
        std = math.sqrt(2.0 / fan_out)
        assert weight.std().item() == pytest.approx(std, rel=0.02)
        assert abs(weight.mean().item()) < 0.02 * std
        # A normal sample of this size reaches beyond 3.5 std; a uniform one stops at sqrt(3).
        assert weight.abs().max().item() > 3.5 * std


def test_batchnorm_starts_at_weight_1_bias_0(net):
    norms = [m for m in net.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 3 * (3 + 4 + 23 + 3) + 4        # stem, 3 per bottleneck, 4 downsamples
    for norm in norms:
        assert bool((norm.weight == 1).all()) and bool((norm.bias == 0).all())


# -- optimiser: the release's SGD (momentum 0.9, weight decay 5e-4, lr 1e-3) --------------------------
def test_sgd_update_by_hand():
    from fafnet.training.loop import build_optimizer

    model = nn.Module()
    model.weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    optimizer = build_optimizer(model, {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4})
    gradient = torch.tensor([2.0, 0.5], dtype=torch.float64)
    for _ in range(2):
        optimizer.zero_grad()
        (gradient * model.weight).sum().backward()
        optimizer.step()
    # d1 = g + 5e-4 w0; b1 = d1; w1 = w0 - 1e-3 b1
    # d2 = g + 5e-4 w1; b2 = 0.9 b1 + d2; w2 = w1 - 1e-3 b2
    # weight 0: d1 = 2.0005, w1 = 0.9979995, d2 = 2.00049899975, b2 = 3.80094899975
    # weight 1: d1 = 0.499, w1 = -2.000499, d2 = 0.4989997505, b2 = 0.9480997505
    expected = torch.tensor([0.99419855100025, -2.0014470997505], dtype=torch.float64)
    torch.testing.assert_close(model.weight.detach(), expected, atol=1e-13, rtol=0)


def test_the_constants_tool_names_text_that_is_there_once():
    """tests/tools/check_constants_pinned.py mutates each constant of the method by text; a
    refactor that moves one (the files, the config) must move the tool's entry with it."""
    import importlib.util
    from tests.helpers import ROOT
    spec = importlib.util.spec_from_file_location("constants_tool",
                                                  f"{ROOT}/tests/tools/check_constants_pinned.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    counts = {(mutation.name, path): open(f"{ROOT}/{path}").read().count(mutation.old)
              for mutation in tool.MUTATIONS for path in mutation.files}
    assert {key: n for key, n in counts.items() if n != 1} == {}
    assert len(tool.MUTATIONS) > 80
