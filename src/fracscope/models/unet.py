"""The multi-task particle network: shared encoder, U-Net phase decoder, class head.

Input (N, C, S, S) with C = 2 by default: the normalised crop and the particle's own
mask. Output: class logits (N, 3) and phase logits (N, 4, S, S) at full input
resolution. S must be a multiple of 32.

Two class heads (``NetConfig.class_head``):

- ``phases`` (default): a small strided CNN on the network's own phase probabilities
  and the particle mask. The damage class is defined by the cracks (any crack pixel:
  damaged; cracks cutting the section: broken), and the phase head draws them at full
  resolution, where the deepest encoder map (/32) has mostly lost 1-2 px cracks. Its
  input is detached, so the class loss cannot disturb the segmentation.
- ``pooled`` (the first models): an MLP on the mean- and max-pooled deepest encoder
  map. Measured: it stayed near chance on the synthetic set (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fracscope.models.encoders import build_encoder
from fracscope.types import CLASS_NAMES, PHASE_NAMES


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild the network (stored in checkpoints as a plain dict)."""

    encoder: str = "resnet18"
    in_channels: int = 2
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)
    num_classes: int = len(CLASS_NAMES)
    num_phases: int = len(PHASE_NAMES)
    dropout: float = 0.2
    class_head: str = "phases"   # phases | pooled (see the module docstring)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        d = dict(d)
        # Checkpoints written before the key existed have the pooled head.
        d.setdefault("class_head", "pooled")
        if "decoder_channels" in d:
            d["decoder_channels"] = tuple(int(c) for c in d["decoder_channels"])
        return cls(**d)

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "in_channels": self.in_channels,
            "decoder_channels": list(self.decoder_channels),
            "num_classes": self.num_classes,
            "num_phases": self.num_phases,
            "dropout": self.dropout,
            "class_head": self.class_head,
        }


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample ×2, concatenate the skip, two 3×3 convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvBNReLU(cin + cskip, cout), ConvBNReLU(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class UNetBody(nn.Module):
    """An encoder from the registry and a U-Net decoder back to full input resolution.

    Shared by the particle network, the detector and the phase network. A light
    full-resolution stem feeds the last decoder stage so that features one or two pixels
    wide survive (the encoder's first map is already /2). With ``full_resolution=False``
    the decoder stops at /2 (no stem, no last stage; `decode` returns /2 features with
    decoder_channels[3] channels and decoder_channels[4] is the caller's to use): the
    full-resolution stage is most of a light network's time on the CPU (memory-bound).
    """

    def __init__(
        self, encoder: str, in_channels: int, decoder_channels: tuple[int, ...], full_resolution: bool = True
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {decoder_channels}")
        self.encoder = build_encoder(encoder, in_channels)
        enc = self.encoder.channels  # strides 2, 4, 8, 16, 32
        d = decoder_channels
        self.full_resolution = full_resolution
        if full_resolution:  # built first: the same random initialisation as before the option existed
            self.full_res = ConvBNReLU(in_channels, d[4])
        up = [
            UpBlock(enc[4], enc[3], d[0]),  # /32 -> /16
            UpBlock(d[0], enc[2], d[1]),  # -> /8
            UpBlock(d[1], enc[1], d[2]),  # -> /4
            UpBlock(d[2], enc[0], d[3]),  # -> /2
        ]
        if full_resolution:
            up.append(UpBlock(d[3], d[4], d[4]))  # -> /1 with the full-res stem
        self.up = nn.ModuleList(up)

    def decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(deepest encoder map, decoder features: full resolution with decoder_channels[4] channels, or
        /2 with decoder_channels[3] channels when built with ``full_resolution=False``)."""
        f1, f2, f3, f4, f5 = self.encoder(x)
        y = self.up[0](f5, f4)
        y = self.up[1](y, f3)
        y = self.up[2](y, f2)
        y = self.up[3](y, f1)
        if self.full_resolution:
            y = self.up[4](y, self.full_res(x))
        return f5, y


class PhaseClassHead(nn.Module):
    """Class logits from phase probabilities + particle mask: strided convs, mean and max pooled.

    Five stride-2 stages take a 128 px crop to 4 px, so the last features see the whole
    section: enough to tell a crack that cuts it through from one that ends inside.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        chans = [width, width * 2, width * 4, width * 4, width * 8]
        layers: list[nn.Module] = [ConvBNReLU(in_channels, chans[0])]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), ConvBNReLU(cout, cout)]
        layers += [nn.Conv2d(chans[-1], chans[-1], 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(chans[-1]),
                   nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * chans[-1], num_classes))

    def forward(self, phase_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        f = self.features(torch.cat([phase_prob, mask], dim=1))
        return self.classifier(torch.cat([f.mean(dim=(2, 3)), torch.amax(f, dim=(2, 3))], dim=1))


class ParticleNet(UNetBody):
    """Shared encoder with a class head and a U-Net phase head."""

    def __init__(self, cfg: NetConfig = NetConfig()) -> None:
        super().__init__(cfg.encoder, cfg.in_channels, cfg.decoder_channels)
        self.cfg = cfg
        enc, d = self.encoder.channels, cfg.decoder_channels
        self.phase_head = nn.Conv2d(d[4], cfg.num_phases, 1)
        if cfg.class_head == "phases":
            self.class_head: nn.Module = PhaseClassHead(cfg.num_phases + 1, cfg.num_classes, dropout=cfg.dropout)
        elif cfg.class_head == "pooled":
            self.class_head = nn.Sequential(
                nn.Dropout(cfg.dropout), nn.Linear(2 * enc[4], 128), nn.ReLU(inplace=True),
                nn.Linear(128, cfg.num_classes),
            )
        else:
            raise ValueError(f"unknown class_head {cfg.class_head!r}; valid: 'phases', 'pooled'")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (class_logits (N, num_classes), phase_logits (N, num_phases, S, S))."""
        f5, y = self.decode(x)
        phase_logits = self.phase_head(y)
        if self.cfg.class_head == "phases":
            # The own-mask channel; the whole crop for a network without one.
            mask = x[:, 1:2] if self.cfg.in_channels > 1 else torch.ones_like(x[:, :1])
            return self.class_head(torch.softmax(phase_logits.detach(), dim=1), mask), phase_logits
        # Mean and max pooling: max keeps evidence of a single long crack.
        pooled = torch.cat([f5.mean(dim=(2, 3)), torch.amax(f5, dim=(2, 3))], dim=1)
        return self.class_head(pooled), phase_logits


def build_model(cfg: NetConfig | dict) -> ParticleNet:
    """Build a `ParticleNet` from a `NetConfig` or its dict form."""
    if isinstance(cfg, dict):
        cfg = NetConfig.from_dict(cfg)
    return ParticleNet(cfg)
