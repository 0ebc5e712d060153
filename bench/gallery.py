"""Gallery of synthetic images beside the real reference -> docs/img/synthetic_gallery.png.

Reproduce: python bench/gallery.py [--out docs/img/synthetic_gallery.png]
Rows: gp and p crops, intact / mildly damaged / broken; bottom: a synthetic wide field
at the reference's ~33 nm/px beside the real 3_phase.tif.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fracscope.synth import generate_crops, generate_electrode, load_config

REFERENCE = Path("/work/shared/reference/samba-web/3_phase.tif")
ROOT = Path(__file__).resolve().parents[1]


def _u8(px: np.ndarray) -> np.ndarray:
    return (px.astype(np.float32) / np.iinfo(px.dtype).max * 255).astype(np.uint8)


def _tile(px: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(_u8(px)).resize((size, size), Image.BILINEAR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "docs/img/synthetic_gallery.png"))
    ap.add_argument("--per-row", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    rows, labels = [], []
    for preset in ("gp", "p"):
        for k, name in enumerate(("intact", "mildly damaged", "broken")):
            dmg = [0, 0, 0]
            dmg[k] = 1
            cfg = load_config(preset, [f"damage=[{dmg[0]},{dmg[1]},{dmg[2]}]"])
            items = list(generate_crops(cfg, args.per_row, args.seed + 10 * k))
            rows.append(np.hstack([_tile(it.image.pixels, 220) for it in items]))
            labels.append(f"{preset}: {name}")
    field_cfg = load_config("p", ["electrode.pixel_size_um=0.033", "electrode.field_px=[754,1012]"])
    field = next(generate_electrode(field_cfg, 1, args.seed))
    ref = tifffile.imread(REFERENCE)

    fig = plt.figure(figsize=(16, 22), dpi=80)
    gs = fig.add_gridspec(2, 2, height_ratios=[len(rows) * 220, 760], hspace=0.06, wspace=0.03)
    ax = fig.add_subplot(gs[0, :])
    ax.imshow(np.vstack(rows), cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([110 + 220 * i for i in range(len(rows))], labels, fontsize=13)
    ax.set_xticks([])
    ax.set_title("synthetic crops (40-60 nm/px), fracscope.synth", fontsize=14)
    for j, (img, title) in enumerate(((_u8(field.image.pixels), "synthetic wide field, preset p, 33 nm/px"),
                                      (_u8(ref), "real: 3_phase.tif (tldr-group/samba-web, MIT), ~33 nm/px"))):
        a = fig.add_subplot(gs[1, j])
        a.imshow(img, cmap="gray", vmin=0, vmax=255)
        a.set_title(title, fontsize=13)
        a.axis("off")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
