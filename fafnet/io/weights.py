"""Where the pretrained backbone files are: their names (docs/protocol.md section 2) and
torchvision's download cache, found without importing torch (the config's default)."""
import os
from typing import Optional

DOWNLOAD_URL = "https://download.pytorch.org/models/"
DEEPLABV3_FILE = "deeplabv3_resnet101_coco-586e9e4e.pth"   # torchvision DeepLabV3-ResNet-101, COCO
IMAGENET_FILE = "resnet101-63fe2227.pth"                   # torchvision ResNet-101, ImageNet
PRETRAINED_FILES = (DEEPLABV3_FILE, IMAGENET_FILE)          # the paper's choice first


def torch_hub_dir() -> str:
    """torch.hub.get_dir() without importing torch: $TORCH_HOME/hub, by default
    ~/.cache/torch/hub ($XDG_CACHE_HOME/torch/hub)."""
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return os.path.join(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))), "hub")


def cached_pretrained_weights() -> Optional[str]:
    """The first of the two pretrained files found in torchvision's download cache
    (<torch hub dir>/checkpoints), DeepLabV3 first; None if neither is there."""
    folder = os.path.join(torch_hub_dir(), "checkpoints")
    for name in PRETRAINED_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None
