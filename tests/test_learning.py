"""A learning check: FAF-Net fits one fixed episode.

Trains the whole model (encoder, ICM/AFF, threshold head) with the training losses on one
small, fixed episode (a bright blob in a noisy slice, support and query shifted against each
other) and checks that the query loss falls by a large factor and that the query's Dice ends
high. If gradients stop flowing, a loss term is cut from the graph, or the optimiser stops
updating the weights, the loss stays where it started and this test fails.
"""
import numpy as np
import torch
from torchvision.models.resnet import Bottleneck

from fafnet.models import FAFNet

SIZE = (33, 33)
STEPS = 10
LEARNING_RATE = 1e-3       # Adam: the optimiser the demo trains a random start with
LOSS_FALL_FACTOR = 5.0     # the query loss must end at most 1/5 of its start (measured: ~1/15)
MIN_DICE = 0.6             # measured: ~0.8 (the 9 x 9 feature map blurs the disc's edge)


def blob_slice(generator: torch.Generator, centre, radius: float = 6.0):
    """A noisy [H, W] slice with a bright disc (the 'organ'), and the disc's mask."""
    rows, cols = torch.meshgrid(torch.arange(SIZE[0], dtype=torch.float32),
                                torch.arange(SIZE[1], dtype=torch.float32), indexing="ij")
    mask = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2).float()
    image = 0.3 * torch.randn(SIZE, generator=generator) + 1.5 * mask
    return image, mask


def fixed_episode():
    """One 1-shot episode: support images [1,3,H,W], mask [1,H,W], query [1,3,H,W], labels [1,H,W]."""
    generator = torch.Generator().manual_seed(0)
    support, support_mask = blob_slice(generator, (12.0, 13.0))
    query, query_mask = blob_slice(generator, (18.0, 19.0))
    as_images = lambda x: x.expand(3, *SIZE)[None].contiguous()  # noqa: E731 (grey -> 3 channels)
    return as_images(support), support_mask[None], as_images(query), query_mask[None].long()


def dice(prediction: torch.Tensor, label: torch.Tensor) -> float:
    tp = float((prediction & label.bool()).sum())
    return 2 * tp / (float(prediction.sum()) + float(label.sum()))


def train_on_episode(model: FAFNet, optimizer: torch.optim.Optimizer, steps: int):
    """`steps` updates on the fixed episode with the training loss (query + alignment +
    prototype); returns the query losses before each step and the final query prediction."""
    support, support_mask, query, query_label = fixed_episode()
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        probs, named = model(support, support_mask, query, query_label)
        q_loss = named["query_loss"]
        (q_loss + named["align_loss"] + named["proto_loss"]).backward()
        optimizer.step()
        losses.append(q_loss.item())
    with torch.no_grad():
        probs, _ = model(support, support_mask, query)
    return losses, probs.argmax(dim=1).bool(), query_label


def demo_random_start(model: FAFNet) -> FAFNet:
    """The demo's random start (train.py's zero_init_residual=True and
    threshold_head_init_scale=0.05): every bottleneck's last BatchNorm weight at 0 and the
    threshold head's output conv at 1/20 of the release's initialisation. With the release's
    initialisation alone, Adam drives this episode's prediction to all-background, where the
    clamped loss has no gradient."""
    for module in model.modules():
        if isinstance(module, Bottleneck):
            torch.nn.init.zeros_(module.bn3.weight)
    with torch.no_grad():
        model.encoder.threshold_head[-1].weight.mul_(0.05)
    return model


def test_fafnet_fits_one_fixed_episode():
    torch.manual_seed(0)
    model = demo_random_start(FAFNet(image_size=SIZE))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    losses, prediction, label = train_on_episode(model, optimizer, STEPS)
    assert np.isfinite(losses).all()
    start, end = losses[0], min(losses[-3:])
    assert end * LOSS_FALL_FACTOR <= start, f"query loss {start:.4f} -> {end:.4f}: it did not fall"
    episode_dice = dice(prediction, label)
    assert episode_dice >= MIN_DICE, f"the query's Dice after training is {episode_dice:.3f}"
