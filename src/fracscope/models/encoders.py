"""Encoder registry over torchvision backbones, exposing multi-scale features.

Every encoder returns five feature maps at strides 2, 4, 8, 16 and 32 of the input,
so one U-Net decoder fits them all. Weights are never downloaded (``weights=None``):
SEM cross-sections look nothing like ImageNet, and the tests run offline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)


def _replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for one that reads `in_channels` (same geometry otherwise)."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    kernel_size=child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=1,
                    bias=child.bias is not None,
                )
                setattr(parent, name, new)
                return
    raise ValueError("backbone has no Conv2d to adapt")


class MultiScaleEncoder(nn.Module):
    """A backbone cut into five sequential stages; `forward` returns one map per stage.

    Attributes
    ----------
    channels : tuple of int
        Channels of the five feature maps, shallow to deep.
    """

    def __init__(self, stages: list[nn.Module], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _resnet(factory: Callable[..., nn.Module], in_channels: int) -> MultiScaleEncoder:
    net = factory(weights=None)
    _replace_first_conv(net, in_channels)
    stages = [
        nn.Sequential(net.conv1, net.bn1, net.relu),
        nn.Sequential(net.maxpool, net.layer1),
        net.layer2,
        net.layer3,
        net.layer4,
    ]
    last = [getattr(net, f"layer{i}")[-1] for i in range(1, 5)]
    chans = tuple(
        (blk.conv3.out_channels if hasattr(blk, "conv3") else blk.conv2.out_channels) for blk in last
    )
    return MultiScaleEncoder(stages, (net.conv1.out_channels, *chans))


def _sequential_features(features: nn.Sequential, in_channels: int) -> MultiScaleEncoder:
    """Group a `features` Sequential into stages at each stride change.

    The grouping is found once, at construction, with a dummy input, so `forward`
    has no data-dependent control flow (ONNX export stays a static graph).
    """
    _replace_first_conv(features, in_channels)
    blocks = list(features.children())
    probe = torch.zeros(1, in_channels, 64, 64)
    sizes, chans = [], []
    was_training = features.training
    features.eval()
    with torch.no_grad():
        x = probe
        for blk in blocks:
            x = blk(x)
            sizes.append(x.shape[-1])
            chans.append(x.shape[1])
    features.train(was_training)
    stages: list[nn.Module] = []
    channels: list[int] = []
    start = 0
    for stride in STRIDES:
        want = 64 // stride
        ends = [i for i, s in enumerate(sizes) if s == want]
        if not ends:
            raise ValueError(f"backbone has no block at stride {stride}")
        end = ends[-1] + 1
        stages.append(nn.Sequential(*blocks[start:end]))
        channels.append(int(chans[end - 1]))
        start = end
    return MultiScaleEncoder(stages, tuple(channels))


ENCODERS: dict[str, Callable[[int], MultiScaleEncoder]] = {
    "resnet18": lambda c: _resnet(tvm.resnet18, c),
    "resnet34": lambda c: _resnet(tvm.resnet34, c),
    "resnet50": lambda c: _resnet(tvm.resnet50, c),
    "mobilenet_v3_large": lambda c: _sequential_features(tvm.mobilenet_v3_large(weights=None).features, c),
    "mobilenet_v3_small": lambda c: _sequential_features(tvm.mobilenet_v3_small(weights=None).features, c),
    "efficientnet_b0": lambda c: _sequential_features(tvm.efficientnet_b0(weights=None).features, c),
    "efficientnet_b1": lambda c: _sequential_features(tvm.efficientnet_b1(weights=None).features, c),
}


def encoder_names() -> list[str]:
    """Names accepted by `build_encoder`, sorted."""
    return sorted(ENCODERS)


def build_encoder(name: str, in_channels: int = 2) -> MultiScaleEncoder:
    """Build a registered backbone with `in_channels` inputs and random weights.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the valid ones.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(encoder_names())}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    return ENCODERS[name](in_channels)
