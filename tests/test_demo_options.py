"""The demo's random-start options of train.py: zero_init_residual, threshold_head_init_scale and
save_initial_snapshot (all off by default: the release's behaviour)."""
import os

import pytest
import torch
from torchvision.models.resnet import Bottleneck

from fafnet.runtime.rng import seed_everything
from fafnet.models import FAFNet, build_model, scale_threshold_head, zero_init_residual
from tests.test_experiment import base_config, run_train, train_script, write_phantom

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
    ({"threshold_head_init_scale": 0}, "threshold_head_init_scale=0 must be a number > 0"),
    ({"zero_init_residual": "yes"}, "zero_init_residual='yes' must be True or False"),
    ({"zero_init_residual": True, "pretrained_weights": "weights.pth"},
     r"config option model\.zero_init_residual=True is for a random start; with model\.pretrained_weights="),
    ({"save_initial_snapshot": 1}, "save_initial_snapshot=1 must be True or False"),
])
def test_bad_demo_options_fail_before_the_run_starts(updates, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train_script.ex.run(named_configs=["SYNTHETIC"], config_updates={"runs_dir": str(tmp_path), **updates})
    assert not os.listdir(tmp_path)


def test_initial_snapshot_holds_the_weights_training_started_from(tmp_path):
    data_dir = str(tmp_path / "data")
    write_phantom(data_dir)
    config = base_config(data_dir, str(tmp_path / "runs"), n_steps=1, snapshot_interval=1,
                         optimizer="adam", lr=1e-4, zero_init_residual=True,
                         threshold_head_init_scale=0.05, save_initial_snapshot=True)
    run = run_train(config)
    folder = os.path.join(run.observers[0].dir, "snapshots")
    assert sorted(os.listdir(folder)) == ["final.pth", "step_0000000.pth"]
    initial = torch.load(os.path.join(folder, "step_0000000.pth"), weights_only=True)
    trained = torch.load(os.path.join(folder, "final.pth"), weights_only=True)
    assert initial["step"] == 0 and initial["kind"] == "weights" and trained["step"] == 1

    seed_everything(run.config["seed"])
    expected = build_model(run.config["dataset"]["image_size"], torch.device("cpu")).state_dict()
    head = "encoder.threshold_head.2.weight"
    torch.testing.assert_close(initial["model"][head], 0.05 * expected[head])
    bn3 = [k for k in expected if k.endswith("bn3.weight")]
    assert len(bn3) == RESNET101_BOTTLENECKS
    assert all(torch.count_nonzero(initial["model"][k]) == 0 for k in bn3)
    untouched = "encoder.backbone.conv1.weight"
    torch.testing.assert_close(initial["model"][untouched], expected[untouched])
    # One Adam step later the weights have moved.
    assert not torch.equal(trained["model"][untouched], initial["model"][untouched])
