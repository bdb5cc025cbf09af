"""Pretrained backbone loading (torchvision ResNet-101 and DeepLabV3 formats, with real
torchvision state dicts) and the conversion of the authors' release checkpoints."""
import pytest
import torch
import torchvision

from fafnet.models import FAFNet, convert_release_checkpoint, load_pretrained_backbone
from fafnet.models.encoder import REQUIRED_MODULES, _build_backbone
from fafnet.models.pretrained import DEEPLABV3_URL, IMAGENET_URL


class NotATensor:
    """A pickled custom object: weights_only loading must refuse it."""


@pytest.fixture(scope="module")
def resnet_state():
    torch.manual_seed(1)
    return torchvision.models.resnet101().state_dict()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, resnet_state):
    folder = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(2)
    deeplab = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None)
    files = {"imagenet": folder / "resnet101-63fe2227.pth", "deeplab": folder / "deeplabv3_resnet101.pth",
             "linear": folder / "linear.pth", "resnet18": folder / "resnet18.pth", "pickle": folder / "obj.pth"}
    torch.save(resnet_state, files["imagenet"])
    deeplab_state = deeplab.state_dict()
    torch.save(deeplab_state, files["deeplab"])
    torch.save(torch.nn.Linear(3, 2).state_dict(), files["linear"])
    torch.save(torchvision.models.resnet18().state_dict(), files["resnet18"])
    torch.save({"x": NotATensor()}, files["pickle"])
    return files, deeplab_state


def test_imagenet_format_loads_every_backbone_tensor(weight_files, resnet_state):
    files, _ = weight_files
    net = FAFNet(image_size=(33, 33), pretrained_weights=str(files["imagenet"]))
    expected = {k: v for k, v in resnet_state.items() if not k.startswith("fc.")}
    assert net.encoder.pretrained_tensors_loaded == len(expected)
    loaded = net.encoder.backbone.state_dict()
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


def test_deeplab_format_loads_the_backbone_and_ignores_classifiers(weight_files):
    files, deeplab_state = weight_files
    backbone = _build_backbone()
    count = load_pretrained_backbone(backbone, files["deeplab"], REQUIRED_MODULES)
    expected = {k[len("backbone."):]: v for k, v in deeplab_state.items() if k.startswith("backbone.")}
    assert count == len(expected) == len(backbone.state_dict())
    loaded = backbone.state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


def test_missing_file_names_path_and_both_formats(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as error:
        FAFNet(image_size=(33, 33), pretrained_weights=str(missing))
    message = str(error.value)
    assert str(missing) in message and IMAGENET_URL in message and DEEPLABV3_URL in message


@pytest.mark.parametrize("kind, match", [("linear", "contain no ResNet-101 backbone tensor"),
                                         ("resnet18", "has shape"),
                                         ("pickle", "cannot read pretrained weights")])
def test_wrong_files_give_clear_errors(weight_files, kind, match):
    files, _ = weight_files
    with pytest.raises(ValueError, match=match) as error:
        load_pretrained_backbone(_build_backbone(), files[kind], REQUIRED_MODULES)
    assert str(files[kind]) in str(error.value) and IMAGENET_URL in str(error.value)


# -- partial files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("resnet50") / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def test_resnet50_file_is_refused_with_a_summary_of_what_is_missing(resnet50_file):
    with pytest.raises(ValueError) as error:
        FAFNet(image_size=(33, 33), pretrained_weights=str(resnet50_file))
    message = str(error.value)
    assert str(resnet50_file) in message and "match 318 of 624 backbone tensors" in message
    assert "lack 255 of the 470 that the encoder runs" in message
    assert "layer3.6-22: all 255 tensors" in message and "pretrained_allow_partial=True" in message
    # the same file with DeepLabV3's key prefix
    deeplab_style = resnet50_file.parent / "deeplabv3_resnet50_style.pth"
    torch.save({f"backbone.{k}": v for k, v in torch.load(resnet50_file).items()}, deeplab_style)
    with pytest.raises(ValueError, match="layer3.6-22: all 255 tensors"):
        load_pretrained_backbone(_build_backbone(), deeplab_style, REQUIRED_MODULES)


def test_partial_load_when_explicitly_allowed(resnet50_file, caplog):
    torch.manual_seed(5)
    net = FAFNet(image_size=(33, 33), pretrained_weights=str(resnet50_file), allow_partial_pretrained=True)
    assert net.encoder.pretrained_tensors_loaded == 318
    assert "lack 255 of the 470" in caplog.text and "partial load allowed" in caplog.text
    source = torch.load(resnet50_file)
    loaded = net.encoder.backbone.state_dict()
    assert torch.equal(loaded["layer3.5.conv2.weight"], source["layer3.5.conv2.weight"])
    assert torch.equal(loaded["layer4.2.conv3.weight"], source["layer4.2.conv3.weight"])
    torch.manual_seed(5)
    assert torch.equal(loaded["layer3.6.conv1.weight"],   # keeps the initialisation
                       FAFNet(image_size=(33, 33)).encoder.backbone.state_dict()["layer3.6.conv1.weight"])


def test_layer4_and_batch_counters_are_optional_but_every_used_tensor_is_required(tmp_path, resnet_state):
    without_layer4 = {k: v for k, v in resnet_state.items()
                      if not k.startswith("layer4.") and not k.endswith("num_batches_tracked")}
    torch.save(without_layer4, tmp_path / "no_layer4.pth")
    backbone = _build_backbone()
    assert load_pretrained_backbone(backbone, tmp_path / "no_layer4.pth", REQUIRED_MODULES) == len(without_layer4) - 2   # fc
    assert torch.equal(backbone.state_dict()["layer3.22.bn3.running_var"], resnet_state["layer3.22.bn3.running_var"])
    one_short = dict(resnet_state)
    del one_short["layer3.22.bn3.running_mean"], one_short["conv1.weight"]
    torch.save(one_short, tmp_path / "one_short.pth")
    with pytest.raises(ValueError, match=r"lack 2 of the 470 that the encoder runs \(conv1, bn1, "
                                         r"layer1, layer2, layer3\): conv1: all 1 tensors; layer3\.22: 1 of 15 "
                                         r"tensors \(bn3\.running_mean\);"):
        load_pretrained_backbone(_build_backbone(), tmp_path / "one_short.pth", REQUIRED_MODULES)


# -- release checkpoints -----------------------------------------------------------------------
RELEASE_SHAPES = {
    "encoder.reduce1.weight": (512, 1024, 1, 1), "encoder.reduce2.weight": (512, 2048, 1, 1),
    "encoder.down.0.weight": (512, 1024, 1, 1), "encoder.down.2.weight": (1, 512, 1, 1),
    **{f"cross_att.fc_{p}.weight": (2048, 512) for p in "qkv"},
    **{f"cross_att.fc_{p}.bias": (2048,) for p in "qkv"},
    "cross_att.fc_o.weight": (512, 2048), "cross_att.fc_o.bias": (512,),
    **{f"cross_att.{b}_res1.0.weight": (512, 512, 1, 1) for b in ("amp", "pha")},
    **{f"cross_att.{b}_res2.1.weight": (512, 512, 3, 3) for b in ("amp", "pha")},
    **{f"cross_att.{b}_res3.1.weight": (4, 512, 1, 1) for b in ("amp", "pha")},
    "cross_att.down1.weight": (2145, 4225), "cross_att.down1.bias": (2145,),
    "cross_att.down2.weight": (2145, 4225), "cross_att.down2.bias": (2145,),
}


@pytest.fixture(scope="module")
def release_state(resnet_state):
    generator = torch.Generator().manual_seed(3)
    state = {f"encoder.backbone.{k}": v for k, v in resnet_state.items()}
    state.update({k: torch.randn(shape, generator=generator) for k, shape in RELEASE_SHAPES.items()})
    return state


def test_release_checkpoint_loads_strictly_with_the_right_tensors(release_state):
    net = FAFNet(image_size=(257, 257))
    net.load_state_dict(convert_release_checkpoint(release_state), strict=True)
    own = net.state_dict()
    pairs = {
        "encoder.backbone.layer3.5.conv2.weight": "encoder.backbone.layer3.5.conv2.weight",
        "encoder.backbone.layer4.2.bn3.running_var": "encoder.backbone.layer4.2.bn3.running_var",
        "encoder.reduce1.weight": "encoder.reduce_features.weight",
        "encoder.reduce2.weight": "encoder.reduce_layer4.weight",
        "encoder.down.2.weight": "encoder.threshold_head.2.weight",
        "cross_att.fc_k.bias": "icm.key_proj.bias",
        "cross_att.fc_o.weight": "icm.out_proj.weight",
        "cross_att.amp_res2.1.weight": "icm.aff.amplitude.conv_mid.weight",
        "cross_att.pha_res3.1.weight": "icm.aff.phase.conv_heads.weight",
        "cross_att.down1.weight": "icm.aff.amplitude.spectrum_linear.weight",
        "cross_att.down2.bias": "icm.aff.phase.spectrum_linear.bias",
    }
    for release_name, name in pairs.items():
        assert torch.equal(own[name], release_state[release_name]), (release_name, name)


def test_release_conversion_strips_dataparallel_prefix_and_rejects_strangers(release_state):
    wrapped = {f"module.{k}": v for k, v in release_state.items()}
    assert convert_release_checkpoint(wrapped).keys() == convert_release_checkpoint(release_state).keys()
    with pytest.raises(ValueError, match="unexpected key.*decoder.weight"):
        convert_release_checkpoint({**release_state, "decoder.weight": torch.zeros(1)})
