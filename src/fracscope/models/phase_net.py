"""`PhaseNet`: the dense phase network on the image grid (native resolution).

Input (N, 1, H, W): the percentile-normalised SEM image resampled to the phase model's
working pixel size (`fracscope.phase_map`); H and W multiples of 32. Output
(N, 4, H, W): one logit per phase (background, solid, pore, crack) for every pixel.
`PhaseProbabilities` (what is exported) applies the softmax.

Unlike the crop model, the network never sees a particle shrunk into a fixed crop: a
crack one source pixel wide stays about one pixel wide. The body is the shared U-Net
(`fracscope.models.unet.UNetBody`) with a MobileNet-V3-small encoder and a light decoder
by default: 16 kFLOP per working pixel (bench/phase_net_budget.py), so a whole field costs
less than today's crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fracscope.models.unet import UNetBody
from fracscope.types import PHASE_NAMES


@dataclass(frozen=True)
class PhaseNetConfig:
    """Everything needed to rebuild a `PhaseNet` (stored in checkpoints as a plain dict)."""

    encoder: str = "mobilenet_v3_small"
    in_channels: int = 1
    decoder_channels: tuple[int, ...] = (48, 32, 24, 16, 8)
    num_phases: int = len(PHASE_NAMES)

    @classmethod
    def from_dict(cls, d: dict) -> PhaseNetConfig:
        """Build from a (Hydra/plain) dict; unknown keys such as ``channels_last`` are ignored."""
        return cls(
            encoder=str(d.get("encoder", cls.encoder)),
            in_channels=int(d.get("in_channels", cls.in_channels)),
            decoder_channels=tuple(int(c) for c in d.get("decoder_channels", cls.decoder_channels)),
            num_phases=int(d.get("num_phases", cls.num_phases)),
        )

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "in_channels": self.in_channels,
                "decoder_channels": list(self.decoder_channels), "num_phases": self.num_phases}


class PhaseNet(UNetBody):
    """U-Net with a 1x1 head: phase logits at full input resolution."""

    def __init__(self, cfg: PhaseNetConfig = PhaseNetConfig()) -> None:
        super().__init__(cfg.encoder, cfg.in_channels, cfg.decoder_channels)
        self.cfg = cfg
        self.head = nn.Conv2d(cfg.decoder_channels[4], cfg.num_phases, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_phases, H, W) phase logits."""
        return self.head(self.decode(x)[1])


class PhaseProbabilities(nn.Module):
    """Wraps a `PhaseNet` to return softmax phase probabilities (N, 4, H, W): the exported graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def build_phase_net(cfg: PhaseNetConfig | dict) -> PhaseNet:
    """Build a `PhaseNet` from a `PhaseNetConfig` or its dict form."""
    if isinstance(cfg, dict):
        cfg = PhaseNetConfig.from_dict(cfg)
    return PhaseNet(cfg)
