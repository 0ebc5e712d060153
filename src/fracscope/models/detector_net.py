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

from fracscope.models.unet import UNetBody


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


class DetectorNet(UNetBody):
    """U-Net with a 2-channel head: foreground logit and sigmoid distance."""

    def __init__(self, cfg: DetectorNetConfig = DetectorNetConfig()) -> None:
        super().__init__(cfg.encoder, cfg.in_channels, cfg.decoder_channels)
        self.cfg = cfg
        self.head = nn.Conv2d(cfg.decoder_channels[4], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): [foreground logit, sigmoid distance]."""
        _, y = self.decode(x)
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
