"""The demo's random-start options: FAF-Net's model options zero_init_residual and
threshold_head_init_scale (model_options.<name>; flat options of train.py in 0.5), and
train.py's save_initial_snapshot (all off by default: the release's behaviour)."""
import os

import pytest
import torch
from torchvision.models.resnet import Bottleneck

from fafnet.models import FAFNet, build_model, scale_threshold_head, zero_init_residual
from fafnet.runtime.rng import seed_everything
from tests.helpers import base_config, experiment_for, model_state, run_train

SIZE = (33, 33)
RESNET101_BOTTLENECKS = 3 + 4 + 23 + 3


def test_zero_init_residual_makes_every_bottleneck_start_as_the_identity():
    torch.manual_seed(0)
    model = FAFNet(image_size=SIZE)
    assert zero_init_residual(model) == RESNET101_BOTTLENECKS
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    # A block without downsampling now returns relu(x + 0) = x for a non-negative input
    # (BatchNorm's shift starts at 0), in training and in eval mode.
    block = model.encoder.backbone.layer3[5]
    x = torch.relu(torch.randn(2, 1024, 5, 5))
    for mode in (True, False):
        block.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(block(x), x)


def test_threshold_head_init_scale_scales_the_threshold_map():
    torch.manual_seed(0)
    model = FAFNet(image_size=SIZE).eval()
    images = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        _, before = model.encoder(images)
        scale_threshold_head(model, 0.05)
        _, after = model.encoder(images)
    # T is linear in the output conv's weights (up to float32 rounding of a different sum).
    torch.testing.assert_close(after, 0.05 * before, rtol=1e-4, atol=0.0)


@pytest.mark.parametrize("updates, message", [
    ({"model_options": {"threshold_head_init_scale": 0}}, r"model_options.threshold_head_init_scale=0 must be > 0"),
    ({"model_options": {"zero_init_residual": "yes"}}, "model_options.zero_init_residual='yes' must be True or False"),
    ({"model_options": {"zero_init_residual": True}, "pretrained_weights": "weights.pth"},
     r"zero_init_residual=True is for a random start; with pretrained_weights='weights.pth'"),
    ({"save_initial_snapshot": 1}, "save_initial_snapshot=1 must be True or False"),
    # 0.5's flat names are refused, naming the model option they became.
    ({"zero_init_residual": True}, r"zero_init_residual: one of FAF-Net's model options since 0.6 "
                                   r"\(model_options.zero_init_residual=...\)"),
])
def test_bad_demo_options_fail_before_the_run_starts(updates, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        experiment_for("train").run(named_configs=["SYNTHETIC"], config_updates={"runs_dir": str(tmp_path), **updates})
    assert not os.listdir(tmp_path)


def test_initial_snapshot_holds_the_weights_training_started_from(phantom, tmp_path):
    config = base_config(phantom, str(tmp_path / "runs"), n_steps=1, snapshot_interval=1, optimizer="adam", lr=1e-4,
                         model_options={"zero_init_residual": True, "threshold_head_init_scale": 0.05},
                         save_initial_snapshot=True)
    run = run_train(config)
    folder = os.path.join(run.observers[0].dir, "snapshots")
    assert sorted(os.listdir(folder)) == ["final.pth", "step_0000000.pth"]
    initial = model_state(os.path.join(folder, "step_0000000.pth"))
    trained = model_state(os.path.join(folder, "final.pth"))
    assert initial["step"] == 0 and initial["kind"] == "weights" and trained["step"] == 1
    assert initial["model_options"] == trained["model_options"] == {
        "icm": True, "aff": True, "threshold": "adaptive", "zero_init_residual": True, "threshold_head_init_scale": 0.05}

    seed_everything(run.config["seed"])
    expected = build_model("fafnet", run.config["image_size"]).state_dict()
    head = "encoder.threshold_head.2.weight"
    torch.testing.assert_close(initial["model"][head], 0.05 * expected[head])
    bn3 = [k for k in expected if k.endswith("bn3.weight")]
    assert len(bn3) == RESNET101_BOTTLENECKS
    assert all(torch.count_nonzero(initial["model"][k]) == 0 for k in bn3)
    untouched = "encoder.backbone.conv1.weight"
    torch.testing.assert_close(initial["model"][untouched], expected[untouched])
    # One Adam step later the weights have moved.
    assert not torch.equal(trained["model"][untouched], initial["model"][untouched])
