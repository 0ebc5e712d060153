"""A class route measured for issue 18: a small CNN on each section's native phase map ("section net").

    python bench/pipeline_accuracy.py --tuning-seed 555 --detector learned --classify head \
        --workdir W555 --pairs-csv W555/pairs.csv         (and more tuning seeds / --synth variants)
    python bench/section_net.py --fit W555 [W557s ...] --eval W556 [W556s ...]
        [--generate 601 601s ...] [--cache DIR] [--stack] [--folds K] [--drawn 101] [--save NET.pt | --load NET.pt]

Each W is a kept `pipeline_accuracy.py` work folder (its fields, its run's instances/ and phases/) with its
pairs CSV as W/pairs.csv. A section's input is a square window around its mask, shrunk to `--size` px:
grey level inside the mask (area mean), the mask (area mean), pore share (area mean) and crack (footprint
max, so a one-pixel crack survives as in `fracscope.phase_map.footprint_max`). The net (7.1 MFLOP per section
at 64 px, against the crop model's 2.5 GFLOP) is trained on the judged pairs of `--fit` and the whole
judgeable sections of generated tuning fields (`--generate SEED`, "s": with short cracks; true masks, the
shipped phase model's phases), with flips and quarter turns, classes weighted by the square root of their
inverse frequency.

Reported on the judged pairs of each `--eval` folder, beside the shipped route's ingredients:
- net alone; the crop model's head alone (the pairs' ``pred_p_*`` of a ``--classify head`` run);
- logistic on the crack features; logistic + head (the shipped route, refitted here on `--fit`);
- logistic + net: with `--folds K` the net's probabilities on `--fit` are taken out of fold; with `--stack`
  the net is trained on the generated sections only and the logistic fitted on the `--fit` pairs, which the
  net never saw.
`--drawn SEED` also scores the net alone on `bench/crack_visibility.py`'s drawn sections (true masks).
Tuning seeds only: never the held-out fields.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from class_routes import load_pairs  # noqa: E402

from fracscope.classify import CRACK_FEATURES, HEAD_FEATURES, CrackClassifier  # noqa: E402
from fracscope.crop import normalize_intensity  # noqa: E402
from fracscope.phase_map import footprint_max  # noqa: E402
from fracscope.scores import ClassScores  # noqa: E402
from fracscope.types import CLASS_NAMES, Phase  # noqa: E402

MARGIN = 1.15  # window side / the mask's longer side


def _window(arr: np.ndarray, r0: int, c0: int, side: int, fill=0) -> np.ndarray:
    out = np.full((side, side), fill, dtype=arr.dtype)
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = min(r0 + side, arr.shape[0]), min(c0 + side, arr.shape[1])
    if re > rs and ce > cs:
        out[rs - r0:re - r0, cs - c0:ce - c0] = arr[rs:re, cs:ce]
    return out


def section_input(grey: np.ndarray, instances: np.ndarray, codes: np.ndarray, pid: int, size: int) -> np.ndarray:
    """(4, size, size) float32: grey, mask, pore share, crack (footprint max) of one predicted section."""
    import cv2

    rows, cols = np.nonzero(instances == pid)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(int(np.ceil(max(r1 - r0, c1 - c0) * MARGIN)), size)
    top, left = (r0 + r1 - side) // 2, (c0 + c1 - side) // 2
    mask = _window(instances, top, left, side) == pid
    code = np.where(mask, _window(codes, top, left, side), 0)
    g = _window(grey, top, left, side).astype(np.float32)

    def area(x):
        return cv2.resize(np.asarray(x, np.float32), (size, size), interpolation=cv2.INTER_AREA)

    return np.stack([area(g * mask), area(mask), area(code == Phase.PORE),
                     footprint_max((code == Phase.CRACK).astype(np.float32), (size, size))]).astype(np.float32)


def load_sections(workdir: Path, size: int) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Inputs (N, 4, S, S) of the judged pairs of one kept work folder, the pairs, their crack+head features."""
    pairs, x, _ = load_pairs(str(workdir / "pairs.csv"), CRACK_FEATURES + HEAD_FEATURES)
    inputs = []
    for stem, group in pairs.groupby("image", sort=False):
        preset, field = stem.split("__")
        grey = normalize_intensity(tifffile.imread(workdir / "fields" / preset / f"{field}.tif"))
        inst = tifffile.imread(workdir / "out" / "instances" / f"{stem}.tif")
        codes = tifffile.imread(workdir / "out" / "phases" / f"{stem}.tif")
        for idx, pid in zip(group.index, group["pred_id"]):
            inputs.append((idx, section_input(grey, inst, codes, int(pid), size)))
    inputs.sort(key=lambda t: t[0])
    return np.stack([t[1] for t in inputs]), pairs, x


def generated_sections(seed: int, n_particles: int, size: int, synth: tuple[str, ...] = ()):
    """Inputs, classes and presets of the whole judgeable sections of generated tuning fields (seed `seed`),
    their masks the true instances and their phases the shipped phase model's (no detector, no crop model)."""
    from dataclasses import replace

    from pipeline_accuracy import tuning_config

    from fracscope.phase_map import PhaseMapModel
    from fracscope.synth import with_overrides
    from fracscope.synth.generate import generate_electrode

    model = PhaseMapModel(threads=1)
    xs, ys, presets = [], [], []
    for preset in ("gp", "p"):
        cfg = with_overrides(replace(tuning_config(preset), seed=seed), list(synth))
        for item in generate_electrode(cfg, n_particles // 2, seed=seed, workers=1):
            codes = model.predict_codes(item.image.pixels, item.image.pixel_size_um).inside
            grey = normalize_intensity(item.image.pixels)
            for a in item.particles:
                m = a.measurements
                if m.get("touches_border", 0) or m["eq_diameter_um"] < 3.0:
                    continue
                xs.append(section_input(grey, item.instances, codes, a.particle_id, size))
                ys.append(CLASS_NAMES.index(a.class_name))
                presets.append(preset)
    return np.stack(xs), np.asarray(ys), np.asarray(presets)


def drawn_sections(seed: int, per_cell: int, intact: int, size: int):
    """Inputs and crack lengths (µm, 0 = intact) of `bench/crack_visibility.py`'s drawn sections (true masks,
    the shipped phase model's phases), every preset x pixel size."""
    from crack_visibility import PIXEL_SIZES_UM, PRESETS, make_fields

    from fracscope.phase_map import PhaseMapModel

    model = PhaseMapModel(threads=1)
    xs, lengths, widths = [], [], []
    for preset in PRESETS:
        for px in PIXEL_SIZES_UM:
            for f in make_fields(preset, px, per_cell, intact, seed, [], 1280):
                codes = model.predict_codes(f.image.pixels, px).inside
                grey = normalize_intensity(f.image.pixels)
                for pid, sec in f.sections.items():
                    xs.append(section_input(grey, f.instances, codes, pid, size))
                    lengths.append(sec.crack.length_um if sec.crack else 0.0)
                    widths.append(sec.crack.width_px if sec.crack else 0)
    return np.stack(xs), np.asarray(lengths), np.asarray(widths)


def build_net(channels: int = 4, width: int = 16):
    import torch.nn as nn

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    w = width
    return nn.Sequential(
        *block(channels, w, 2), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 3))


def train_net(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0, width: int = 16):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_net(x.shape[1], width)
    counts = np.bincount(y, minlength=3).astype(np.float64)
    weight = torch.tensor(np.sqrt(counts.sum() / np.maximum(counts, 1)), dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    steps = epochs * int(np.ceil(len(x) / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 64):
            b = order[i:i + 64]
            xb = xt[b]
            k = int(rng.integers(4))
            xb = torch.rot90(xb, k, (2, 3))
            if rng.random() < 0.5:
                xb = torch.flip(xb, (3,))
            loss = F.cross_entropy(net(xb), yt[b], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net


def net_probs(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), 1).numpy().astype(np.float64)


def scores(y: np.ndarray, probs: np.ndarray, presets: np.ndarray) -> str:
    pred = probs.argmax(1)
    s = ClassScores.from_labels(y, pred)
    worst = max(abs(np.bincount(pred[presets == p], minlength=3) / max((presets == p).sum(), 1)
                    - np.bincount(y[presets == p], minlength=3) / max((presets == p).sum(), 1)).max()
                for p in np.unique(presets))
    return f"macro-F1 {s.macro_f1:.3f}, max class-fraction error per preset {100 * worst:.1f} pp"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit", nargs="*", default=[])
    ap.add_argument("--generate", nargs="*", default=[], metavar="SEED[s]",
                    help="also train on generated tuning fields of these seeds (s: with short cracks)")
    ap.add_argument("--generate-particles", type=int, default=2000)
    ap.add_argument("--cache", default=None, help="folder to keep the generated sections in between runs")
    ap.add_argument("--eval", nargs="+", required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--folds", type=int, default=3, help="0: no out-of-fold net probabilities, no logistic + net")
    ap.add_argument("--stack", action="store_true",
                    help="train the net on the generated sections only, and fit logistic + net on the --fit pairs "
                         "with its probabilities (it never saw them)")
    ap.add_argument("--save", default=None, help="save the trained net's weights here (torch state dict)")
    ap.add_argument("--load", default=None, help="load the net from here instead of training it")
    ap.add_argument("--drawn", type=int, default=None, metavar="SEED",
                    help="also score the net on bench/crack_visibility.py's drawn sections of this tuning seed")
    ap.add_argument("--drawn-per-cell", type=int, default=6)
    ap.add_argument("--channels", default="0,1,2,3", help="input channels kept: 0 grey, 1 mask, 2 pore, 3 crack")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)  # small convolutions: a second thread only contends here
    keep = [int(c) for c in args.channels.split(",")]
    t0 = time.perf_counter()
    fit = [load_sections(Path(d), args.size) for d in args.fit]
    xf = np.concatenate([f[0] for f in fit])[:, keep]
    yf = np.concatenate([f[1]["true_class"].to_numpy() for f in fit])
    ff = np.concatenate([f[2] for f in fit])
    print(f"fit: {len(yf)} judged sections from {len(args.fit)} folders (classes {np.bincount(yf, minlength=3)}), "
          f"inputs {time.perf_counter() - t0:.0f} s")
    xg, yg = [np.zeros((0,) + xf.shape[1:], np.float32)], [np.zeros(0, np.int64)]
    for spec in args.generate:
        t = time.perf_counter()
        synth = ("particle.short_crack_fraction=0.5",) if spec.endswith("s") else ()
        cached = Path(args.cache) / f"sections_{spec}_{args.generate_particles}_{args.size}.npz" if args.cache else None
        if cached is not None and cached.exists():
            x, y = (np.load(cached)[k] for k in ("x", "y"))
        else:
            x, y, _ = generated_sections(int(spec.rstrip("s")), args.generate_particles, args.size, synth)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, x=x, y=y)
        xg.append(x[:, keep])
        yg.append(y)
        print(f"generated seed {spec}: {len(y)} sections (classes {np.bincount(y, minlength=3)}) in "
              f"{time.perf_counter() - t:.0f} s")
    xg, yg = np.concatenate(xg), np.concatenate(yg)
    # Out-of-fold net probabilities on the fit sections, for the stacked logistic.
    folds = np.random.default_rng(1).integers(max(args.folds, 1), size=len(yf))
    oof = np.zeros((len(yf), 3))
    for k in range(args.folds):
        t = time.perf_counter()
        net = train_net(np.concatenate([xf[folds != k], xg]), np.concatenate([yf[folds != k], yg]), args.epochs,
                        seed=k, width=args.width)
        oof[folds == k] = net_probs(net, xf[folds == k])
        print(f"  fold {k}: {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    if args.load:
        net = build_net(len(keep), args.width)
        net.load_state_dict(torch.load(args.load))
        net.eval()
    else:
        x_net, y_net = (xg, yg) if args.stack else (np.concatenate([xf, xg]), np.concatenate([yf, yg]))
        net = train_net(x_net, y_net, args.epochs, seed=99, width=args.width)
    if args.stack:
        oof = net_probs(net, xf)
    if args.save:
        torch.save(net.state_dict(), args.save)
    print(f"net on all fit sections: {time.perf_counter() - t:.0f} s"
          + (f"; on the --fit pairs {scores(yf, oof, np.zeros(len(yf)))}" if args.folds or args.stack else ""))
    n_crack = len(CRACK_FEATURES)
    cw = np.sqrt(len(yf) / np.maximum(np.bincount(yf, minlength=3), 1))
    log_crack = CrackClassifier.fit(ff[:, :n_crack], yf, CRACK_FEATURES, class_weight=cw)
    log_head = CrackClassifier.fit(ff, yf, CRACK_FEATURES + HEAD_FEATURES, class_weight=cw)
    net_names = tuple(f"net_p_{n}" for n in CLASS_NAMES)
    log_net = (args.folds or args.stack) and CrackClassifier.fit(
        np.hstack([ff[:, :n_crack], oof]), yf, CRACK_FEATURES + net_names, class_weight=cw)
    for d in args.eval:
        xe, pe, fe = load_sections(Path(d), args.size)
        xe = xe[:, keep]
        ye, presets = pe["true_class"].to_numpy(), pe["image"].str.split("__").str[0].to_numpy()
        pn = net_probs(net, xe)
        print(f"eval {d} ({len(ye)} judged sections):")
        for name, probs in (
            ("net alone", pn),
            ("crop head alone", fe[:, n_crack:]),
            ("logistic on crack features", log_crack.predict_proba(fe[:, :n_crack])),
            ("logistic + head (shipped route)", log_head.predict_proba(fe)),
            *([("logistic + net", log_net.predict_proba(np.hstack([fe[:, :n_crack], pn])))] if log_net else []),
        ):
            print(f"  {name:34s} {scores(ye, probs, presets)}")
    if args.drawn is not None:
        xd, length, width = drawn_sections(args.drawn, args.drawn_per_cell, 4 * args.drawn_per_cell, args.size)
        damaged = net_probs(net, xd[:, keep]).argmax(1) != CLASS_NAMES.index("intact")
        print(f"drawn sections of seed {args.drawn} (true masks), net alone, damaged share by crack length: "
              + ", ".join(f"{v:g} µm {100 * damaged[length == v].mean():.0f} % (n={int((length == v).sum())})"
                          for v in np.unique(length) if v > 0)
              + "; by width (>= 1 µm): " + ", ".join(f"{w} px {100 * damaged[(width == w) & (length >= 1)].mean():.0f} %"
                                                       for w in (1, 2, 3))
              + f"; false damage on intact {100 * damaged[length == 0].mean():.0f} % (n={int((length == 0).sum())})")
    print("reproduce: python bench/section_net.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
