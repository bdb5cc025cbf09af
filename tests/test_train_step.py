"""The training step without host synchronisation (fafnet.training.step) and the branchless
alignment loss: equal to the original formulations, bitwise on the CPU; the non-finite stop
before the update; GPU options that fall back cleanly where they cannot run; the device-
dependent default batch size of `FAFNet.predict`."""
import copy
import logging
import math
import os
import subprocess
import sys
import types

import pytest
import torch

import torch.nn.functional as F

from fafnet.models import FAFNet, clamped_nll, default_predict_batch_size, masked_average_pooling, query_loss
from fafnet.models.fafnet import _at_least_float32
from fafnet.training.step import NonFiniteLossError, TrainStep, optimizer_implementation

SIZE = (33, 33)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a step reports for FAF-Net: the total, FAF-Net's three losses in its order, the norm.
FAFNET_VALUES = ("loss", "query_loss", "align_loss", "proto_loss", "grad_norm")


# -- the original formulations, kept as the reference --------------------------------------------
def original_alignment_losses(self, support_features, support_thresholds, support_masks, query_features,
                              query_probs, refined_support_prototypes):
    """FAFNet.alignment_losses written with a branch: a query whose pseudo-mask is empty is
    skipped after asking the device (a host synchronisation per query)."""
    shots, queries = support_features.shape[0], query_features.shape[0]
    pseudo_masks = (query_probs.argmax(dim=1) == 1).to(query_features.dtype)
    align_loss = query_probs.new_zeros(())
    proto_loss = query_probs.new_zeros(())
    for index in range(queries):
        if not bool(pseudo_masks[index].any()):
            continue
        query_prototype = masked_average_pooling(query_features[index:index + 1], pseudo_masks[index:index + 1])
        refined = self.icm(query_prototype.expand(shots, -1), support_features)
        foreground = self.segment(support_features, support_thresholds, refined)
        support_probs = torch.stack([1.0 - foreground, foreground], dim=1)
        align_loss = align_loss + clamped_nll(support_probs, support_masks.round().long())
        target = refined_support_prototypes[index:index + 1].expand(shots, -1)
        proto_loss = proto_loss + F.mse_loss(_at_least_float32(refined), _at_least_float32(target))
    return align_loss / queries, proto_loss / queries


def original_train_step(model, optimizer, scheduler, episode, grad_clip_norm=None, amp_bf16=False,
                        channels_last=False):
    """The plain update: forward, query loss, the sum, item() of each loss, backward, norm,
    step (on the CPU); the model's own query loss must equal the one computed here."""
    images = [episode[key].contiguous(memory_format=torch.channels_last) if channels_last else episode[key]
              for key in ("support_images", "query_images")]
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_bf16):
        probs, losses = model(images[0], episode["support_masks"], images[1], episode["query_labels"])
    assert list(losses) == ["query_loss", "align_loss", "proto_loss"]
    align_loss, proto_loss = losses["align_loss"], losses["proto_loss"]
    q_loss = query_loss(probs.float(), episode["query_labels"])
    assert torch.equal(losses["query_loss"], q_loss)
    loss = q_loss + align_loss.float() + proto_loss.float()
    values = {"loss": loss.item(), "query_loss": q_loss.item(), "align_loss": align_loss.item(),
              "proto_loss": proto_loss.item()}
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError("loss")
    loss.backward()
    values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm or float("inf")))
    if not all(math.isfinite(v) for v in values.values()):
        raise FloatingPointError("gradient")
    optimizer.step()
    scheduler.step()
    return values


def make_episode(seed: int, shots: int = 1, queries: int = 1):
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(shots, *SIZE)
    masks[:, 8:20, 10:24] = 1.0
    labels = torch.zeros(queries, *SIZE, dtype=torch.long)
    labels[:, 6:18, 12:26] = 1
    return {"support_images": torch.randn(shots, 3, *SIZE, generator=generator), "support_masks": masks,
            "query_images": torch.randn(queries, 3, *SIZE, generator=generator), "query_labels": labels}


@pytest.fixture(scope="module")
def base_model():
    torch.manual_seed(0)
    return FAFNet(image_size=SIZE).train()


def sgd_with_schedule(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.5)


def assert_same_state(model_a, model_b):
    state_b = model_b.state_dict()
    for name, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, state_b[name]), f"{name} differs"


# -- the branchless alignment loss --------------------------------------------------------------
def alignment_inputs(model, shots=2, queries=3):
    """Encoder outputs of an episode and query probabilities whose pseudo-masks are non-empty
    for queries 0 and 2 and empty for query 1."""
    episode = make_episode(1, shots, queries)
    features, thresholds = model.encoder(torch.cat([episode["support_images"], episode["query_images"]]))
    probs = torch.zeros(queries, 2, *SIZE)
    probs[:, 0] = 0.8
    probs[:, 1] = 0.2
    probs[0, :, 5:15, 5:15] = probs[0].flip(0)[:, 5:15, 5:15]
    if queries > 2:
        probs[2, :, 20:30, 3:9] = probs[2].flip(0)[:, 20:30, 3:9]
    refined = torch.randn(queries, 512, generator=torch.Generator().manual_seed(2))
    return (features[:shots], thresholds[:shots], episode["support_masks"], features[shots:], probs, refined)


def test_branchless_alignment_losses_equal_the_original_values_and_gradients(base_model):
    model = copy.deepcopy(base_model)
    inputs = alignment_inputs(model)
    assert [bool((inputs[4][i].argmax(0) == 1).any()) for i in range(3)] == [True, False, True]
    results = {}
    for name, function in (("branchless", FAFNet.alignment_losses), ("original", original_alignment_losses)):
        model.zero_grad(set_to_none=True)
        align, proto = function(model, *inputs)
        (align + 2 * proto).backward(retain_graph=True)
        results[name] = (align.detach(), proto.detach(),
                         {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    new, old = results["branchless"], results["original"]
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    assert new[0] > 0 and new[1] > 0
    assert set(old[2]) <= set(new[2])
    for name, grad in new[2].items():
        expected = old[2].get(name, torch.zeros_like(grad))
        assert torch.equal(grad, expected), f"gradient of {name} differs"


def test_empty_pseudo_masks_add_exactly_zero_and_no_gradient(base_model):
    model = copy.deepcopy(base_model)
    support_features, support_thresholds, masks, query_features, _, refined = alignment_inputs(model, queries=2)
    background_only = torch.zeros(2, 2, *SIZE)
    background_only[:, 0] = 1.0
    model.zero_grad(set_to_none=True)
    align, proto = model.alignment_losses(support_features, support_thresholds, masks, query_features,
                                          background_only, refined)
    assert align.item() == 0.0 and proto.item() == 0.0
    (align + proto).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "the branch must still be differentiated (branchless)"
    for grad in grads:
        assert torch.isfinite(grad).all() and not grad.any()


# -- the training step --------------------------------------------------------------------------
@pytest.mark.parametrize("shots, queries, grad_clip_norm", [(1, 1, None), (2, 2, 0.5)])
def test_train_step_gives_the_original_steps_weights_bitwise(base_model, shots, queries, grad_clip_norm):
    reference, fast = copy.deepcopy(base_model), copy.deepcopy(base_model)
    reference.alignment_losses = types.MethodType(original_alignment_losses, reference)
    reference_optimizer, reference_scheduler = sgd_with_schedule(reference)
    optimizer, scheduler = sgd_with_schedule(fast)
    step = TrainStep(fast, optimizer, scheduler, grad_clip_norm=grad_clip_norm)
    align_losses = []
    for index in range(2):
        episode = make_episode(10 + index, shots, queries)
        expected = original_train_step(reference, reference_optimizer, reference_scheduler, episode, grad_clip_norm)
        values = step(episode)
        assert list(values) == list(FAFNET_VALUES)
        assert values == expected
        align_losses.append(values["align_loss"])
    assert max(align_losses) > 0, "the alignment branch must run for the comparison to mean something"
    assert optimizer.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"] == 5e-4
    assert_same_state(fast, reference)
    for parameter, reference_parameter in zip(fast.parameters(), reference.parameters()):
        buffers = optimizer.state.get(parameter), reference_optimizer.state.get(reference_parameter)
        assert (buffers[0] is None) == (buffers[1] is None)
        if buffers[0] is not None:
            assert torch.equal(buffers[0]["momentum_buffer"], buffers[1]["momentum_buffer"])


def test_bf16_channels_last_step_equals_the_original_with_those_options(base_model):
    reference, fast = copy.deepcopy(base_model), copy.deepcopy(base_model)
    reference.alignment_losses = types.MethodType(original_alignment_losses, reference)
    reference.to(memory_format=torch.channels_last)
    reference_optimizer, reference_scheduler = sgd_with_schedule(reference)
    optimizer, scheduler = sgd_with_schedule(fast)
    # A momentum buffer restored from a contiguous snapshot takes the channels-last layout.
    conv = fast.encoder.backbone.conv1.weight
    optimizer.state[conv]["momentum_buffer"] = torch.zeros_like(conv, memory_format=torch.contiguous_format)
    reference_optimizer.state[reference.encoder.backbone.conv1.weight]["momentum_buffer"] = torch.zeros_like(conv)
    step = TrainStep(fast, optimizer, scheduler, amp_bf16=True, channels_last=True)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert optimizer.state[conv]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    episode = make_episode(12)
    expected = original_train_step(reference, reference_optimizer, reference_scheduler, episode,
                                   amp_bf16=True, channels_last=True)
    assert step(episode) == expected
    assert_same_state(fast, reference)


def test_non_finite_loss_stops_before_the_update(base_model):
    model = copy.deepcopy(base_model)
    optimizer, scheduler = sgd_with_schedule(model)
    before = copy.deepcopy(model.state_dict())
    episode = make_episode(3)
    episode["support_images"][0, :, 4, 4] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(loss=nan.*without applying this update") as caught:
        TrainStep(model, optimizer, scheduler)(episode)
    assert caught.value.what == "loss" and list(caught.value.values) == list(FAFNET_VALUES[:4])
    for name, tensor in model.state_dict().items():
        if "running" not in name and "num_batches" not in name:   # the forward pass updated BatchNorm
            assert torch.equal(tensor, before[name]), name
    assert not optimizer.state and scheduler.last_epoch == 0


def test_non_finite_gradient_stops_before_the_update(base_model):
    model = copy.deepcopy(base_model)
    optimizer, scheduler = sgd_with_schedule(model)
    weight = model.icm.out_proj.weight.detach().clone()
    model.icm.out_proj.weight.register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(NonFiniteLossError, match="non-finite gradient") as caught:
        TrainStep(model, optimizer, scheduler)(make_episode(4))
    assert caught.value.what == "gradient" and math.isfinite(caught.value.values["loss"])
    assert not math.isfinite(caught.value.values["grad_norm"])
    assert torch.equal(model.icm.out_proj.weight, weight) and scheduler.last_epoch == 0


def test_query_labels_are_checked_on_the_host(base_model):
    model = copy.deepcopy(base_model)
    optimizer, _ = sgd_with_schedule(model)
    episode = make_episode(5)
    episode["query_labels"][0, 0, 0] = 2
    with pytest.raises(ValueError, match="must be 0 \\(background\\) or 1 \\(foreground\\)"):
        TrainStep(model, optimizer)(episode)
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainStep(model, optimizer, compile="everything")
    with pytest.raises(ValueError, match="grad_clip_norm must be None or a number > 0"):
        TrainStep(model, optimizer, grad_clip_norm=0)


def two_steps(model, **options):
    optimizer, scheduler = sgd_with_schedule(model)
    step = TrainStep(model, optimizer, scheduler, **options)
    return [step(make_episode(20 + index)) for index in range(2)], step


def test_gpu_options_fall_back_cleanly_on_the_cpu(base_model, caplog, monkeypatch):
    expected, _ = two_steps(copy.deepcopy(base_model))
    graph_model = copy.deepcopy(base_model)
    with caplog.at_level(logging.WARNING, logger="fafnet.training.step"):
        values, step = two_steps(graph_model, cuda_graph=True)
    assert "cuda_graph needs a CUDA device" in caplog.text and not step.graph_captured
    assert values == expected

    def failing_compile(function, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return compiled

    for target in ("encoder", "model"):
        caplog.clear()
        monkeypatch.setattr(torch, "compile", failing_compile)
        model = copy.deepcopy(base_model)
        with caplog.at_level(logging.WARNING, logger="fafnet.training.step"):
            values, step = two_steps(model, compile=target)
        assert f"torch.compile of the {target} failed (RuntimeError: no C++ compiler found)" in caplog.text
        assert values == expected and step.compile_target is None
        assert "forward" not in vars(model.encoder), "the compiled encoder must be removed again"
        assert list(model.state_dict()) == list(base_model.state_dict())

    def unavailable(function, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    caplog.clear()
    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger="fafnet.training.step"):
        values, step = two_steps(copy.deepcopy(base_model), compile="encoder")
    assert "torch.compile is unavailable" in caplog.text and values == expected


def test_optimizer_implementation_follows_the_device():
    assert optimizer_implementation(torch.device("cpu")) == {}
    assert optimizer_implementation(torch.device("cuda")) == {"fused": True}
    assert optimizer_implementation("cuda:1") == {"fused": True}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_step_matches_the_eager_step_on_cuda(base_model):
    results = {}
    for graph in (False, True):
        model = copy.deepcopy(base_model).cuda()
        optimizer, scheduler = sgd_with_schedule(model)
        step = TrainStep(model, optimizer, scheduler, cuda_graph=graph)
        values = [step(make_episode(30 + index)) for index in range(3)]
        assert step.graph_captured == graph
        results[graph] = (values, {k: v.cpu() for k, v in model.state_dict().items()})
    for eager, graphed in zip(results[False][0], results[True][0]):
        for name in FAFNET_VALUES:
            assert graphed[name] == pytest.approx(eager[name], rel=1e-3, abs=1e-5), name
    for name, tensor in results[False][1].items():
        other = results[True][1][name]
        if tensor.is_floating_point():
            torch.testing.assert_close(other, tensor, atol=1e-4, rtol=1e-3)
        else:
            assert torch.equal(other, tensor), name   # num_batches_tracked: 3 updates each


# -- predict's default batch size ----------------------------------------------------------------
def test_predict_batch_size_follows_the_device(base_model):
    assert default_predict_batch_size(torch.device("cpu")) == 1
    assert default_predict_batch_size(torch.device("cuda")) == 8
    assert default_predict_batch_size("mps") == 8
    model = copy.deepcopy(base_model)
    batches = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    episode = make_episode(6, queries=3)
    model.predict(episode["support_images"], episode["support_masks"], episode["query_images"])
    hook.remove()
    assert batches == [1, 1, 1, 1], "CPU default: the support, then one query slice per pass"


# -- the GPU benchmark runs where the project's I/O packages are missing -------------------------
def test_gpu_benchmark_imports_without_simpleitk_sacred_or_nibabel():
    code = ("import sys\n"
            "for name in ('SimpleITK', 'sacred', 'nibabel'):\n"
            "    sys.modules[name] = None\n"
            "import bench.bench_gpu\n"
            "from fafnet.synthetic.generate import generate_subject\n"
            "image, label, _ = generate_subject(0, 0, size=16, n_slices=4)\n"
            "assert image.shape == (4, 16, 16)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# -- CUDA graphs of the encoder for evaluation --------------------------------------------------
def test_graphs_for_evaluation_are_a_pass_through_off_cuda(base_model):
    from fafnet.evaluation.graphs import GraphedEncoder, GraphedPredict

    model = copy.deepcopy(base_model)
    episode = make_episode(7, queries=3)
    inputs = (episode["support_images"], episode["support_masks"], episode["query_images"])
    expected = model.predict(*inputs, batch_size=2)
    with GraphedEncoder(model.encoder) as graphs:
        assert vars(model.encoder)["forward"] is graphs
        with pytest.raises(RuntimeError, match="already replaced"):
            GraphedEncoder(model.encoder).install()
        result = model.predict(*inputs, batch_size=2)
    assert "forward" not in vars(model.encoder) and graphs.replays == 0 and not graphs.graphs
    assert torch.equal(result, expected)
    graphed_predict = GraphedPredict(model)
    assert torch.equal(graphed_predict(*inputs, batch_size=2), expected) and graphed_predict.replays == 0
    assert torch.equal(graphed_predict.predict(*inputs, batch_size=2), expected)   # stands in for model.predict


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphs_for_evaluation_match_the_eager_model_on_cuda(base_model):
    from fafnet.evaluation.graphs import GraphedEncoder, GraphedPredict

    model = copy.deepcopy(base_model).cuda()
    with torch.no_grad():
        model.train()
        model.encoder(torch.randn(4, 3, *SIZE, device="cuda"))   # BatchNorm statistics of real inputs
    episode = make_episode(8, queries=5)
    inputs = [x.cuda() for x in (episode["support_images"], episode["support_masks"], episode["query_images"])]
    expected = model.predict(*inputs, batch_size=2)
    with GraphedEncoder(model.encoder) as graphs:
        first = model.predict(*inputs, batch_size=2)
        second = model.predict(*inputs, batch_size=2)
    assert len(graphs.graphs) == 2 and graphs.replays == 8   # batch sizes 1 and 2 (1 again for the last)
    torch.testing.assert_close(first, expected, atol=1e-4, rtol=1e-3)
    assert torch.equal(first, second)
    graphed_predict = GraphedPredict(model)
    results = [graphed_predict(*inputs, batch_size=2) for _ in range(2)]
    results.append(graphed_predict(inputs[0], inputs[1], inputs[2][:3], batch_size=2))
    assert len(graphed_predict.graphs) == 2 and graphed_predict.replays == 3
    torch.testing.assert_close(results[0], expected, atol=1e-4, rtol=1e-3)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(results[2], expected[:3], atol=1e-4, rtol=1e-3)


def test_dropped_fast_paths_are_explained_in_one_line():
    from fafnet.io.logs import error_summary
    assert error_summary(RuntimeError("no compiler\n  File x.py, line 3\n  more")) == "RuntimeError: no compiler"
    assert error_summary(ValueError("  \n")) == "ValueError"
