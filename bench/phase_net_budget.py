"""Compute and training speed of candidate dense phase networks for the native-resolution issue (18).

    python bench/phase_net_budget.py [--tile 256] [--batch 8] [--steps 6] [--candidates resnet18-light,...]

For each candidate (an encoder of the shared registry with a U-Net decoder back to full resolution, the
body every fracscope network uses, and a 4-phase 1x1 head) it measures:
- forward cost in kFLOP per input pixel (torch's FlopCounterMode, multiply-adds counted as 2 FLOPs);
- training throughput in tiles/s at `--tile` px: forward, cross-entropy, backward and an AdamW step,
  in fp32 and in bf16 autocast, batch `--batch`, the median of `--steps` timed steps after 2 warm-up steps;
- the parameter count (the fp32 model file is about 4 bytes per parameter, int8 about 1).

The machine's speed drifts 2-3x between days, so the onnxruntime fp32 MatMul peak is printed beside the
numbers. The 60-minute training budget follows as tiles/s x 3,600 s minus data generation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fracscope.models.unet import UNetBody
from throughput import matmul_peak_gflops

# name: (encoder, decoder_channels). "default-decoder" is today's detector/particle-model body.
CANDIDATES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18-default-decoder": ("resnet18", (128, 64, 48, 32, 16)),
    "resnet18-light": ("resnet18", (64, 32, 24, 16, 8)),
    "mobilenet_v3_small-light": ("mobilenet_v3_small", (48, 32, 24, 16, 8)),
    "mobilenet_v3_large-light": ("mobilenet_v3_large", (64, 32, 24, 16, 8)),
    "efficientnet_b0-light": ("efficientnet_b0", (64, 32, 24, 16, 8)),
}
N_PHASES = 4


class PhaseNet(nn.Module):
    """The candidate: the shared U-Net body and a 1x1 head with one logit per phase."""

    def __init__(self, encoder: str, decoder_channels: tuple[int, ...]) -> None:
        super().__init__()
        self.body = UNetBody(encoder, 1, decoder_channels)
        self.head = nn.Conv2d(decoder_channels[4], N_PHASES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body.decode(x)[1])


def kflop_per_pixel(net: nn.Module, tile: int) -> float:
    x = torch.zeros(1, 1, tile, tile)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net.eval()(x)
    return counter.get_total_flops() / tile**2 / 1e3


def train_tiles_per_s(net: nn.Module, tile: int, batch: int, steps: int, bf16: bool) -> float:
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, tile, tile).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, N_PHASES, (batch, tile, tile))
    net = net.to(memory_format=torch.channels_last)
    times = []
    for step in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"onnxruntime fp32 MatMul peak {matmul_peak_gflops():.0f} GFLOP/s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; tiles {args.tile} px, batch {args.batch}")
    print("| candidate | params (M) | kFLOP / px (forward) | train tiles/s fp32 | train tiles/s bf16 |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.candidates.split(","):
        encoder, decoder = CANDIDATES[name]
        net = PhaseNet(encoder, decoder)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        kflop = kflop_per_pixel(net, args.tile)
        fp32 = train_tiles_per_s(net, args.tile, args.batch, args.steps, bf16=False)
        bf16 = train_tiles_per_s(net, args.tile, args.batch, args.steps, bf16=True)
        print(f"| {name} | {params:.2f} | {kflop:.1f} | {fp32:.1f} | {bf16:.1f} |", flush=True)
    print("reproduce: python bench/phase_net_budget.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
