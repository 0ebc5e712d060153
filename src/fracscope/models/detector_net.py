"""`DetectorNet`: the U-Net of the learned particle detector.

Input (N, 1, H, W): the percentile-normalised SEM image at the detector's working pixel
size (`fracscope.detect.learned`); H and W multiples of 32. Output (N, 2, H, W):
channel 0 the foreground *logit*, channel 1 the per-instance normalised distance to
the particle boundary, already through a sigmoid (in [0, 1], 1 at each particle's
centre; the training target of `fracscope.detect.maps_from_labels`). The foreground
stays a logit so training can use the numerically stable BCE-with-logits;
`DetectorProbabilities` (what is exported) applies the sigmoid.

The encoder comes from the shared registry (`fracscope.models.build_encoder`); the
decoder blocks are the classifier U-Net's (`fracscope.models.unet`), so the graph has
no data-dependent control flow and exports to ONNX with dynamic height and width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fracscope.models.encoders import build_encoder
from fracscope.models.unet import ConvBNReLU, UpBlock


@dataclass(frozen=True)
class DetectorNetConfig:
    """Everything needed to rebuild a `DetectorNet` (stored in checkpoints as a plain dict)."""

    encoder: str = "resnet18"
    in_channels: int = 1
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)

    @classmethod
    def from_dict(cls, d: dict) -> DetectorNetConfig:
        """Build from a (Hydra/plain) dict; unknown keys such as ``channels_last`` are ignored."""
        return cls(
            encoder=str(d.get("encoder", cls.encoder)),
            in_channels=int(d.get("in_channels", cls.in_channels)),
            decoder_channels=tuple(int(c) for c in d.get("decoder_channels", cls.decoder_channels)),
        )

    def to_dict(self) -> dict:
        return {"encoder": self.encoder, "in_channels": self.in_channels,
                "decoder_channels": list(self.decoder_channels)}


class DetectorNet(nn.Module):
    """U-Net with a 2-channel head: foreground logit and sigmoid distance."""

    def __init__(self, cfg: DetectorNetConfig = DetectorNetConfig()) -> None:
        super().__init__()
        if len(cfg.decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {cfg.decoder_channels}")
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder, cfg.in_channels)
        enc = self.encoder.channels  # strides 2, 4, 8, 16, 32
        d = cfg.decoder_channels
        # Full-resolution stem: particle outlines are placed to the working pixel.
        self.full_res = ConvBNReLU(cfg.in_channels, d[4])
        self.up = nn.ModuleList(
            [
                UpBlock(enc[4], enc[3], d[0]),
                UpBlock(d[0], enc[2], d[1]),
                UpBlock(d[1], enc[1], d[2]),
                UpBlock(d[2], enc[0], d[3]),
                UpBlock(d[3], d[4], d[4]),
            ]
        )
        self.head = nn.Conv2d(d[4], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): [foreground logit, sigmoid distance]."""
        f1, f2, f3, f4, f5 = self.encoder(x)
        y = self.up[0](f5, f4)
        y = self.up[1](y, f3)
        y = self.up[2](y, f2)
        y = self.up[3](y, f1)
        y = self.up[4](y, self.full_res(x))
        out = self.head(y)
        return torch.cat([out[:, :1], torch.sigmoid(out[:, 1:2])], dim=1)


class DetectorProbabilities(nn.Module):
    """Wraps a `DetectorNet` to return (foreground_prob, distance), each (N, 1, H, W): the exported graph."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        return torch.sigmoid(out[:, :1]), out[:, 1:2]


def build_detector_net(cfg: DetectorNetConfig | dict) -> DetectorNet:
    """Build a `DetectorNet` from a `DetectorNetConfig` or its dict form."""
    if isinstance(cfg, dict):
        cfg = DetectorNetConfig.from_dict(cfg)
    return DetectorNet(cfg)
