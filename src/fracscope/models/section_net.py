"""`SectionNet`: the section net (issue 18), a small CNN that classifies one particle section.

Input (N, 4, S, S): the section window of `fracscope.sections` (grey, mask, pore, crack; S = 64 by
default). Output (N, 3): one logit per damage class (`fracscope.types.CLASS_NAMES`);
`SectionProbabilities` (what is exported) applies the softmax.

Four 3x3 stride-2 conv + BN + ReLU stages of w, 2w, 4w, 4w channels, global average pool,
dropout, one linear layer: at w = 24 and S = 64 about 15 MFLOP per section (7.5 M multiply-adds) against the crop
model's 2.5 GFLOP (prototype and measurements: ``bench/section_net.py``, docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fracscope.types import CLASS_NAMES, SECTION_CHANNELS


@dataclass(frozen=True)
class SectionNetConfig:
    """Everything needed to rebuild a `SectionNet` (stored in checkpoints as a plain dict)."""

    width: int = 24  # channels of the first stage (w); the best of 16 / 24 / 32 measured
    in_channels: int = len(SECTION_CHANNELS)
    num_classes: int = len(CLASS_NAMES)
    dropout: float = 0.2

    @classmethod
    def from_dict(cls, d: dict) -> SectionNetConfig:
        """Build from a (Hydra/plain) dict; unknown keys such as ``channels_last`` are ignored."""
        return cls(width=int(d.get("width", cls.width)), in_channels=int(d.get("in_channels", cls.in_channels)),
                   num_classes=int(d.get("num_classes", cls.num_classes)),
                   dropout=float(d.get("dropout", cls.dropout)))

    def to_dict(self) -> dict:
        return {"width": self.width, "in_channels": self.in_channels, "num_classes": self.num_classes,
                "dropout": self.dropout}


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SectionNet(nn.Module):
    """Class logits (N, num_classes) of section windows (N, in_channels, S, S); any S (global pooling)."""

    def __init__(self, cfg: SectionNetConfig = SectionNetConfig()) -> None:
        super().__init__()
        if cfg.width < 1:
            raise ValueError(f"width must be positive, got {cfg.width}")
        self.cfg = cfg
        w = cfg.width
        self.features = nn.Sequential(*_stage(cfg.in_channels, w), *_stage(w, 2 * w), *_stage(2 * w, 4 * w),
                                      *_stage(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(4 * w, cfg.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SectionProbabilities(nn.Module):
    """Wraps a `SectionNet` to return softmax class probabilities (N, num_classes): the exported graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def build_section_net(cfg: SectionNetConfig | dict) -> SectionNet:
    """Build a `SectionNet` from a `SectionNetConfig` or its dict form."""
    if isinstance(cfg, dict):
        cfg = SectionNetConfig.from_dict(cfg)
    return SectionNet(cfg)
