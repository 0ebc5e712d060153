"""`PhaseNet`: the dense phase network on the image grid (native resolution).

Input (N, 1, H, W): the percentile-normalised SEM image resampled to the phase model's
working pixel size (`fracscope.phase_map`); H and W multiples of 32. Output
(N, 4, H, W): one logit per phase (background, solid, pore, crack) for every pixel.
`PhaseProbabilities` (what is exported) applies the softmax.

Unlike the crop model, the network never sees a particle shrunk into a fixed crop: a
crack one source pixel wide stays about one pixel wide. The body is the shared U-Net
(`fracscope.models.unet.UNetBody`) with a MobileNet-V3-small encoder and a light decoder.

Two heads (``PhaseNetConfig.head``):
- ``shuffle`` (default): the decoder stops at /2; a 3x3 conv of decoder_channels[4]
  channels and a 1x1 conv give 4 phases x 4 sub-pixels, rearranged to full resolution
  (pixel shuffle). The /2 features come from a 3x3 stride-2 stem that sees every pixel,
  so a one-pixel crack still has its own output pixels; measured 2.5x faster in
  onnxruntime and 2x faster to train than ``full`` (docs/BENCHMARKS.md).
- ``full``: the decoder's last stage at full resolution with a full-resolution stem
  (the first shipped phase model; 16 kFLOP per working pixel, memory-bound on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fracscope.models.unet import ConvBNReLU, UNetBody
from fracscope.types import PHASE_NAMES


@dataclass(frozen=True)
class PhaseNetConfig:
    """Everything needed to rebuild a `PhaseNet` (stored in checkpoints as a plain dict)."""

    encoder: str = "mobilenet_v3_small"
    in_channels: int = 1
    decoder_channels: tuple[int, ...] = (48, 32, 24, 16, 16)
    num_phases: int = len(PHASE_NAMES)
    head: str = "shuffle"  # shuffle | full (see the module docstring)

    @classmethod
    def from_dict(cls, d: dict) -> PhaseNetConfig:
        """Build from a (Hydra/plain) dict; unknown keys such as ``channels_last`` are ignored.

        Checkpoints written before ``head`` existed have the full-resolution head.
        """
        return cls(
            encoder=str(d.get("encoder", cls.encoder)),
            in_channels=int(d.get("in_channels", cls.in_channels)),
            decoder_channels=tuple(int(c) for c in d.get("decoder_channels", cls.decoder_channels)),
            num_phases=int(d.get("num_phases", cls.num_phases)),
            head=str(d.get("head", "full")),
        )

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "in_channels": self.in_channels,
                "decoder_channels": list(self.decoder_channels), "num_phases": self.num_phases,
                "head": self.head}


class PhaseNet(UNetBody):
    """U-Net with a phase head: phase logits at full input resolution."""

    def __init__(self, cfg: PhaseNetConfig = PhaseNetConfig()) -> None:
        if cfg.head not in ("shuffle", "full"):
            raise ValueError(f"unknown phase head {cfg.head!r}; valid: 'shuffle', 'full'")
        super().__init__(cfg.encoder, cfg.in_channels, cfg.decoder_channels, full_resolution=cfg.head == "full")
        self.cfg = cfg
        d = cfg.decoder_channels
        if cfg.head == "full":
            self.head: nn.Module = nn.Conv2d(d[4], cfg.num_phases, 1)
        else:
            self.head = nn.Sequential(ConvBNReLU(d[3], d[4]), nn.Conv2d(d[4], cfg.num_phases * 4, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_phases, H, W) phase logits."""
        return self.head(self.decode(x)[1])


def channel_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 from element-wise ops: onnxruntime's Softmax over the channel axis of an NCHW
    tensor took 28 % of the first phase model's time (a strided reduction), these ops a few %."""
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


class PhaseProbabilities(nn.Module):
    """Wraps a `PhaseNet` to return softmax phase probabilities (N, 4, H, W): the exported graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_softmax(self.net(x))


def build_phase_net(cfg: PhaseNetConfig | dict) -> PhaseNet:
    """Build a `PhaseNet` from a `PhaseNetConfig` or its dict form."""
    if isinstance(cfg, dict):
        cfg = PhaseNetConfig.from_dict(cfg)
    return PhaseNet(cfg)
