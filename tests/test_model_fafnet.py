"""Tests of the whole FAF-Net on small images: shapes, probabilities, the episode wiring
(prototype, each image's own threshold map, losses), gradients, `predict` == `forward`,
autocast/channels_last, and input checks."""
import copy

import pytest
import torch
from torch import nn

from fafnet.models import FAFNet, masked_average_pooling, query_loss
from fafnet.models.fafnet import clamped_nll

SIZE = (49, 49)


def calibrate_batchnorm(model: FAFNet, images: torch.Tensor) -> FAFNet:
    """Sets BatchNorm running statistics to those of `images`, then eval mode.

    A randomly initialised ResNet-101 with default running statistics (mean 0, var 1) has
    activations of order 1e5 in eval mode, which saturates every sigmoid; real checkpoints
    don't, and neither should the tests.
    """
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass copies the batch statistics
    model.train()
    with torch.no_grad():
        model.encoder(images)
    return model.eval()


def episode(shots: int, queries: int, size=SIZE, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    support = torch.randn(shots, 3, *size, generator=generator)
    query = torch.randn(queries, 3, *size, generator=generator)
    masks = torch.zeros(shots, *size)
    masks[:, size[0] // 4: size[0] // 2, size[1] // 3: 2 * size[1] // 3] = 1.0
    return support, masks, query


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = FAFNet(image_size=SIZE)
    return calibrate_batchnorm(net, torch.randn(4, 3, *SIZE))


# -- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, features", [((257, 257), (65, 65)), ((256, 256), (64, 64))])
def test_dataset_sizes_give_probabilities_of_the_image_size(size, features):
    net = FAFNet(image_size=size).eval()
    assert net.feature_size == features
    assert net.icm.aff.phase.spectrum_linear.out_features == features[0] * (features[1] // 2 + 1)
    support, masks, query = episode(1, 1, size)
    with torch.no_grad():
        probs, losses = net(support, masks, query)
    assert probs.shape == (1, 2, *size)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, *size))
    assert losses == {}, "without labels the model computes no losses"


def test_non_square_size_and_several_queries():
    net = FAFNet(image_size=(49, 70)).eval()
    assert net.feature_size == (13, 18)
    support, masks, query = episode(2, 2, (49, 70))
    with torch.no_grad():
        probs, _ = net(support, masks, query)
    assert probs.shape == (2, 2, 49, 70)
    assert ((probs >= 0) & (probs <= 1)).all()
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 49, 70))


# -- wiring ----------------------------------------------------------------------------------
def test_three_shots_use_each_images_own_threshold_map(model):
    support, masks, query = episode(3, 1)
    with torch.no_grad():
        probs, losses = model(support, masks, query, torch.zeros(1, *SIZE, dtype=torch.long))
        align, proto = losses["align_loss"], losses["proto_loss"]
        # Reference: docs/protocol.md sections 3 to 6 spelled out from the encoder outputs.
        features, thresholds = model.encoder(torch.cat([support, query]))
        prototype = masked_average_pooling(features[:3], masks).mean(0, keepdim=True)
        refined = model.icm(prototype, features[3:])
        foreground = model.segment(features[3:], thresholds[3:], refined)
        torch.testing.assert_close(probs[:, 1], foreground, atol=1e-5, rtol=1e-5)
        # The release's indexing (the threshold of batch position 0, a support) differs.
        wrong = model.segment(features[3:], thresholds[:1], refined)
        assert (wrong - foreground).abs().max() > 1e-3

        pseudo = (probs.argmax(1) == 1).float()
        assert pseudo.sum() > 0, "the test needs a non-empty query prediction"
        query_prototype = masked_average_pooling(features[3:], pseudo)
        per_shot = []
        for shot in range(3):
            refined_q = model.icm(query_prototype, features[shot:shot + 1])
            fg = model.segment(features[shot:shot + 1], thresholds[shot:shot + 1], refined_q)
            per_shot.append((clamped_nll(torch.stack([1 - fg, fg], 1), masks[shot:shot + 1].long()),
                             ((refined_q - refined) ** 2).mean()))
        expected_align = sum(loss for loss, _ in per_shot) / 3
        expected_proto = sum(loss for _, loss in per_shot) / 3
    torch.testing.assert_close(align, expected_align, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(proto, expected_proto, atol=1e-5, rtol=1e-5)


def test_alignment_losses_are_zero_without_predicted_foreground(model):
    support, masks, query = episode(1, 1)
    with torch.no_grad():
        features, thresholds = model.encoder(torch.cat([support, query]))
        background_only = torch.zeros(1, 2, *SIZE)
        background_only[:, 0] = 1.0
        align, proto = model.alignment_losses(features[:1], thresholds[:1], masks, features[1:],
                                              background_only, torch.randn(1, 512))
    assert align.item() == 0 and proto.item() == 0


def test_predict_equals_separate_forward_calls_and_restores_mode(model):
    # float64: batched and single-image convolutions may take different float32 algorithms
    # (relative differences ~1e-5 after 100 layers); in float64 any real difference shows.
    net = copy.deepcopy(model).double()
    support, masks, query = (x.double() for x in episode(1, 3, seed=1))
    net.train()
    fg = net.predict(support, masks, query, batch_size=2)
    assert net.training, "predict must restore the training mode"
    net.eval()
    with torch.no_grad():
        expected = torch.cat([net(support, masks, query[i:i + 1])[0][:, 1] for i in range(3)])
    assert fg.shape == (3, *SIZE) and fg.dtype == torch.float64 and not fg.requires_grad
    torch.testing.assert_close(fg, expected, atol=1e-9, rtol=1e-9)


# -- training --------------------------------------------------------------------------------
def test_gradients_reach_every_trained_part():
    torch.manual_seed(0)
    net = FAFNet(image_size=SIZE).train()
    support, masks, query = episode(1, 1, seed=2)
    labels = torch.zeros(1, *SIZE, dtype=torch.long)
    labels[:, 20:40, 20:40] = 1
    probs, losses = net(support, masks, query, labels)
    assert list(losses) == ["query_loss", "align_loss", "proto_loss"]
    align, proto = losses["align_loss"], losses["proto_loss"]
    torch.testing.assert_close(losses["query_loss"], query_loss(probs, labels), rtol=0, atol=0)
    assert (probs.argmax(1) == 1).any(), "the test needs a non-empty query prediction"
    # The alignment branch alone trains the ICM, both AFF branches and the support's ATL map.
    aff = net.icm.aff
    branch_parameters = [net.icm.key_proj.weight, aff.amplitude.conv_mid.weight, aff.phase.spectrum_linear.weight,
                         net.encoder.threshold_head[2].weight]
    for grad in torch.autograd.grad(align, branch_parameters, retain_graph=True):
        assert grad.abs().sum() > 0
    (query_loss(probs, labels) + align + proto).backward()
    assert align.item() > 0 and proto.item() > 0
    unused = ("encoder.backbone.layer4.", "encoder.reduce_layer4.")
    for name, parameter in net.named_parameters():
        if name.startswith(unused):
            assert parameter.grad is None, f"{name} is never run, so it must get no gradient"
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient for {name}"
    names = {name for name, _ in net.named_parameters()}
    assert {"encoder.backbone.layer3.22.conv2.weight", "encoder.reduce_features.weight",
            "encoder.threshold_head.0.weight", "icm.query_proj.weight", "icm.key_proj.bias",
            "icm.value_proj.weight", "icm.out_proj.bias", "icm.aff.amplitude.spectrum_linear.weight",
            "icm.aff.phase.conv_mid.weight"} <= names


def test_bfloat16_autocast_and_channels_last():
    torch.manual_seed(0)
    net = FAFNet(image_size=SIZE).train().to(memory_format=torch.channels_last)
    support, masks, query = episode(1, 1, seed=3)
    support, query = (x.contiguous(memory_format=torch.channels_last) for x in (support, query))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs, losses = net(support, masks, query, torch.ones(1, *SIZE, dtype=torch.long))
        loss = losses["query_loss"] + losses["align_loss"] + losses["proto_loss"]
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(1, *SIZE))
    loss.backward()
    assert torch.isfinite(net.icm.aff.phase.spectrum_linear.weight.grad).all()
    assert net.encoder.backbone.conv1.weight.grad.abs().sum() > 0


# -- input checks ----------------------------------------------------------------------------
def test_clear_errors_for_bad_inputs(model):
    support, masks, query = episode(1, 1)
    with pytest.raises(ValueError, match=r"query_images are \(64, 64\) but the model was built for image_size=\(49, 49\)"):
        model(support, masks, torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"support_images must be \[N,3,H,W\]"):
        model(support[:, :1], masks, query)
    with pytest.raises(ValueError, match=r"support_masks must be \[K,H,W\]"):
        model(support, masks[0], query)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.predict(support, masks, query, batch_size=0)
    with pytest.raises(ValueError, match="image_size must be"):
        FAFNet(image_size=(65,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_runs_under_bfloat16_autocast(model):
    support, masks, query = episode(2, 3, seed=4)
    with torch.no_grad():
        expected = model(support, masks, query)[0]
    net = copy.deepcopy(model).cuda()
    inputs = [x.cuda() for x in (support, masks, query)]
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            probs = net(*inputs)[0]
        fg = net.predict(*inputs, batch_size=2)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    # Float32 on both, but the convolution algorithms differ; the random network's large
    # thresholds turn ~1e-6 relative feature differences into ~1e-3 on a few probabilities.
    for result in (probs[:, 1].cpu(), fg.cpu()):
        difference = (result - expected[:, 1]).abs()
        assert difference.mean() < 1e-4 and difference.max() < 2e-2, (difference.mean(), difference.max())
    net.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        probs, losses = net(*inputs, torch.ones(3, *SIZE, dtype=torch.long, device="cuda"))
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    sum(losses.values()).backward()
    assert torch.isfinite(net.icm.aff.amplitude.spectrum_linear.weight.grad).all()
