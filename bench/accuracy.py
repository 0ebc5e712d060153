"""Accuracy benchmark: train the default model, score it on the frozen held-out synth config.

    python bench/accuracy.py            # experiment=default (<= 60 min on the 2-core CPU)
    python bench/accuracy.py --quick    # a ~2-minute check of the whole path (numbers meaningless)
    python bench/accuracy.py --model runs/default/<time>/checkpoints/best-epochNNN.ckpt   # score only

Reports macro-F1 and per-class recall (class head alone and combined with crack
topology), pooled pore IoU over true pores >= 3 px, crack IoU, porosity MAE and bias in
percentage points, and the paper's method side by side: a global Otsu threshold,
dark pixels inside the particle = pores. Held-out data: `load_config(heldout=True)` for
both presets, single-particle crops and one electrode field per preset.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]

QUICK = [
    "data.crop.size=64",
    "data.synth.n_crops=60",
    "data.synth.n_field_particles=30",
    "data.synth.field_px=[384,384]",
    "data.loader.batch_size=16",
    "model.net.decoder_channels=[64,32,32,16,16]",
    "trainer.max_epochs=8",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]


def train(quick: bool, out: Path) -> Path:
    from fracscope.cli import compose
    from fracscope.models.train import run

    overrides = ["experiment=default", f"paths.output_dir={out}", "threads=2", *(QUICK if quick else [])]
    result = run(compose("train", *overrides))
    ckpt = result.best_checkpoint or result.last_checkpoint
    if ckpt is None:
        raise RuntimeError("training wrote no checkpoint")
    return ckpt


def heldout_items(quick: bool):
    from fracscope.synth import generate_crops, generate_electrode, load_config

    n_crops, n_field = (20, 0) if quick else (150, 150)
    items = []
    for k, preset in enumerate(("gp", "p")):
        cfg = load_config(preset, ["damage=[0.4,0.35,0.25]"], heldout=True)
        items += list(generate_crops(cfg, n_crops, seed=9001 + k))
        if n_field:
            items += list(generate_electrode(cfg, n_field, seed=9101 + k, workers=1))
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny training and test set (~2 min)")
    ap.add_argument("--model", help="score this checkpoint/ONNX instead of training")
    ap.add_argument("--out", default=None, help="output folder (default runs/bench/<time>)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    out = Path(args.out or REPO / "runs" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    t0 = time.time()
    model = Path(args.model) if args.model else train(args.quick, out / "train")
    t_train = time.time() - t0
    from fracscope.evaluate import evaluate_items

    items = heldout_items(args.quick)
    rep = evaluate_items(items, model, out / "eval")
    m = rep.metrics
    print("\nfracscope accuracy benchmark (held-out synth config, crop grid)")
    print(f"model: {model}  (training {t_train / 60:.1f} min)   particles: {int(m['n_particles'])}")
    print(f"{'':28s} {'class head':>12s} {'+ topology':>12s}")
    for key in ("macro_f1", "accuracy", "kappa", "recall_intact", "recall_mildly_damaged", "recall_broken"):
        print(f"{key:28s} {m['head_' + key]:12.3f} {m['topology_' + key]:12.3f}")
    print(f"{'pore IoU (pooled, >= 3 px)':28s} {m['pore_iou_ge3px']:12.3f}")
    print(f"{'crack IoU':28s} {m['crack_iou']:12.3f}")
    print(f"{'':28s} {'model':>12s} {'global Otsu':>12s}")
    print(f"{'porosity MAE (pp)':28s} {m.get('porosity_mae_pp', float('nan')):12.2f} {m.get('otsu_porosity_mae_pp', float('nan')):12.2f}")
    print(f"{'porosity bias (pp)':28s} {m.get('porosity_bias_pp', float('nan')):12.2f} {m.get('otsu_porosity_bias_pp', float('nan')):12.2f}")
    print("against the truth at the source resolution (Otsu on the source pixels):")
    print(f"{'porosity MAE (pp)':28s} {m.get('native_porosity_mae_pp', float('nan')):12.2f} {m.get('native_otsu_porosity_mae_pp', float('nan')):12.2f}")
    print(f"{'porosity bias (pp)':28s} {m.get('native_porosity_bias_pp', float('nan')):12.2f} {m.get('native_otsu_porosity_bias_pp', float('nan')):12.2f}")
    print(f"{'crop-grid truth MAE / bias':28s} {m.get('crop_truth_porosity_mae_pp', float('nan')):12.2f} {m.get('crop_truth_porosity_bias_pp', float('nan')):12.2f}")
    print(f"\noutputs: {out}")
    cmd = "python bench/accuracy.py" + (" --quick" if args.quick else "") + (f" --model {args.model}" if args.model else "")
    print(f"reproduce: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
