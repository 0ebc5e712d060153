"""Outputs of a 3-D pore analysis: pores.csv/parquet, summary.json and plots/.

Plots use matplotlib's Agg canvas (`Figure` without pyplot): nothing is shown on screen and
no global figure state is touched.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fracscope.pores3d.measure import RadialShells, size_bin_index, size_bin_labels
from fracscope.report.summary import jsonable

PORES_CSV = "pores.csv"
PORES_PARQUET = "pores.parquet"
SUMMARY_JSON = "summary.json"
PLOTS_DIR = "plots"
# Size classes: small, medium, large (the paper's three bins) and the sub-threshold voids.
CLASS_COLORS: tuple[str, ...] = ("#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
NOISE_COLOR = "#bbbbbb"


def write_tables(table: dict[str, np.ndarray], bins_um3: tuple[float, ...], output_dir: Path) -> tuple[Path, Path]:
    """pores.csv and pores.parquet: one row per pore, plus its size class name."""
    import pandas as pd

    frame = pd.DataFrame(table)
    labels = np.array(size_bin_labels(bins_um3), dtype=object)
    idx = size_bin_index(frame["volume_um3"].to_numpy(), bins_um3)
    frame["size_class"] = np.where(idx >= 0, labels[np.clip(idx, 0, None)], "below_bins")
    csv = output_dir / PORES_CSV
    parquet = output_dir / PORES_PARQUET
    frame.to_csv(csv, index=False, float_format="%.6g")
    frame.to_parquet(parquet, index=False)
    return csv, parquet


def write_summary(summary: dict, output_dir: Path) -> Path:
    """summary.json (strict JSON)."""
    path = output_dir / SUMMARY_JSON
    path.write_text(json.dumps(jsonable(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


@dataclass
class OrthoSlices:
    """Three orthogonal sections through one voxel, collected while the stack streams past.

    centre : (z, y, x) voxel index the sections pass through.
    Each of ``image``, ``labels`` and ``phases`` maps "xy", "xz", "yz" to a 2-D array:
    xy is (Y, X) at z; xz is (Z, X) at y; yz is (Z, Y) at x.
    """

    centre: tuple[int, int, int]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        z, y, x = self.shape
        self.image: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.phases: dict[str, np.ndarray] = {}
        self._planes = {"xy": (y, x), "xz": (z, x), "yz": (z, y)}

    def add(self, z0: int, image: np.ndarray | None, labels: np.ndarray, phases: np.ndarray) -> None:
        """Take the sections' rows out of a chunk of slices ``z0 ..``."""
        cz, cy, cx = self.centre
        z1 = z0 + len(labels)
        for store, block in ((self.image, image), (self.labels, labels), (self.phases, phases)):
            if block is None:
                continue
            if not store:
                for name, shp in self._planes.items():
                    store[name] = np.zeros(shp, block.dtype)
            store["xz"][z0:z1] = block[:, cy, :]
            store["yz"][z0:z1] = block[:, :, cx]
            if z0 <= cz < z1:
                store["xy"][:] = block[cz - z0]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_volume_histogram(volume_um3: np.ndarray, distribution: dict, n_noise: int, min_volume_um3: float,
                          path: Path) -> Path:
    """Pore counts in the paper's volume classes (left) and the full volume histogram (right)."""
    fig = Figure(figsize=(10.0, 3.8))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.5]})
    labels = distribution["labels"]
    pct = np.nan_to_num(np.asarray(distribution["count_pct"], dtype=float))
    colors = [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(len(labels))]
    bars = ax.bar(range(len(labels)), pct, color=colors, width=0.7)
    for b, p, c in zip(bars, pct, distribution["count"]):
        ax.text(b.get_x() + b.get_width() / 2, p + 1.5, f"{p:.1f} %\n(n = {c})", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), [f"{lab}\nµm³" for lab in labels], fontsize=8)
    ax.set_ylabel("pores (% of count)")
    ax.set_ylim(0, max(110.0, float(pct.max()) * 1.25 if pct.size else 110.0))
    ax.set_title(f"Pore volume classes (n = {sum(distribution['count'])})", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)

    v = np.asarray(volume_um3, dtype=float)
    v = v[v > 0]
    if v.size:
        lo = min(float(v.min()), min_volume_um3) / 1.5
        edges = np.logspace(np.log10(lo), np.log10(float(v.max()) * 1.5), 40)
        ax2.hist(v, bins=edges, color="#555555", histtype="stepfilled", alpha=0.8)
        ax2.set_xscale("log")
        for e in distribution["bins_um3"]:
            ax2.axvline(e, color="black", lw=0.8, ls="--")
        ax2.axvspan(lo, min_volume_um3, color=NOISE_COLOR, alpha=0.4, lw=0)
        ax2.text(0.98, 0.97, f"grey: noise < {min_volume_um3:g} µm³\n({n_noise} voids dropped)",
                 transform=ax2.transAxes, fontsize=8, va="top", ha="right")
    else:
        ax2.text(0.5, 0.5, "no pores", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_xlabel("pore volume (µm³)")
    ax2.set_ylabel("pores")
    ax2.set_title("Pore volume distribution (dashed: class edges)", fontsize=10)
    ax2.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _save(fig, path)


def plot_radial_porosity(shells: RadialShells, path: Path) -> Path:
    """Porosity per radial shell (bars) and inside spheres of f·R (line)."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    fr = np.asarray(shells.fractions)
    lefts = np.concatenate([[0.0], fr])
    rights = np.concatenate([fr, [fr[-1] + max(0.1, fr[-1] - (fr[-2] if len(fr) > 1 else 0.0))]])
    shell = np.asarray(shells.shell_pct, dtype=float)
    voids = np.asarray(shells.shell_void_pct, dtype=float)
    ax.bar(lefts, np.nan_to_num(shell), width=rights - lefts, align="edge", color="#4c72b0", alpha=0.75,
           edgecolor="white", label="pores in shell")
    ax.step(np.concatenate([lefts, rights[-1:]]), np.nan_to_num(np.concatenate([voids, voids[-1:]])), where="post",
            color="#999999", lw=1, label="all voids (with noise) in shell")
    ax.plot(fr, shells.sphere_pct, "o-", color="#dd8452", label="pores inside sphere f·R")
    ax.set_xlabel("distance from particle centre r / R  (R: radius of the equal-volume sphere)")
    ax.set_ylabel("porosity (%)")
    ax.set_title("Radial porosity (last bar: particle beyond the largest shell)", fontsize=10)
    ax.set_xlim(0, rights[-1])
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_volume_vs_radius(volume_um3: np.ndarray, r_rel: np.ndarray, open_: np.ndarray, bins_um3, path: Path) -> Path:
    """Each pore's volume against its distance from the particle centre: where the big pores sit."""
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    v, r, o = (np.asarray(a) for a in (volume_um3, r_rel, open_))
    if v.size:
        ax.scatter(r[~o], v[~o], s=6, color="#4c72b0", alpha=0.6, lw=0, label="closed pores")
        ax.scatter(r[o], v[o], s=10, color="#dd8452", alpha=0.9, lw=0, label="open to the outside")
        for k in np.argsort(-v)[:2]:
            ax.annotate(f"{v[k]:.3g} µm³", (r[k], v[k]), xytext=(6, 0), textcoords="offset points", fontsize=8)
        ax.set_yscale("log")
        for e in bins_um3:
            ax.axhline(e, color="black", lw=0.6, ls="--")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no pores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("distance of pore centroid from particle centre, r / R")
    ax.set_ylabel("pore volume (µm³)")
    ax.set_title("Pore size against position", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def _overlay_rgb(image: np.ndarray, labels: np.ndarray, phases: np.ndarray, class_of_label: np.ndarray) -> np.ndarray:
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    grey = np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    from matplotlib.colors import to_rgb

    noise = (phases == 2) & (labels == 0)
    rgb[noise] = 0.5 * rgb[noise] + 0.5 * np.asarray(to_rgb(NOISE_COLOR))
    cls = class_of_label[labels]
    for k in range(int(class_of_label.max()) + 1 if class_of_label.size else 0):
        m = (labels > 0) & (cls == k)
        if m.any():
            rgb[m] = 0.25 * rgb[m] + 0.75 * np.asarray(to_rgb(CLASS_COLORS[k % len(CLASS_COLORS)]))
    return rgb


def plot_orthoslices(ortho: OrthoSlices, voxel_zyx: tuple[float, float, float], volume_um3: np.ndarray,
                     bins_um3, path: Path, max_px: int = 900) -> Path:
    """Three orthogonal sections through the particle centre with the pores coloured by size class."""
    vz, vy, vx = voxel_zyx
    class_of_label = np.zeros(len(volume_um3) + 1, np.int64)
    class_of_label[1:] = np.clip(size_bin_index(volume_um3, bins_um3), 0, None)
    extents = {"xy": (ortho.shape[2] * vx, ortho.shape[1] * vy), "xz": (ortho.shape[2] * vx, ortho.shape[0] * vz),
               "yz": (ortho.shape[1] * vy, ortho.shape[0] * vz)}
    axes_names = {"xy": ("x (µm)", "y (µm)"), "xz": ("x (µm)", "z (µm)"), "yz": ("y (µm)", "z (µm)")}
    cz, cy, cx = ortho.centre
    titles = {"xy": f"xy, slice z = {cz * vz:.2f} µm", "xz": f"xz, y = {cy * vy:.2f} µm",
              "yz": f"yz, x = {cx * vx:.2f} µm"}
    widths = [extents[k][0] for k in ("xy", "xz", "yz")]
    fig = Figure(figsize=(13.0, 4.6))
    axs = fig.subplots(1, 3, gridspec_kw={"width_ratios": widths})
    for ax, name in zip(axs, ("xy", "xz", "yz")):
        if name not in ortho.labels:
            continue
        image = ortho.image.get(name, np.zeros_like(ortho.labels[name], dtype=np.float32))
        rgb = _overlay_rgb(image, ortho.labels[name], ortho.phases[name], class_of_label)
        step = max(1, int(math.ceil(max(rgb.shape[:2]) / max_px)))
        w, h = extents[name]
        ax.imshow(rgb[::step, ::step], extent=(0, w, h, 0), interpolation="nearest")
        ax.contour(np.linspace(0, w, ortho.phases[name][::step, ::step].shape[1]),
                   np.linspace(0, h, ortho.phases[name][::step, ::step].shape[0]),
                   (ortho.phases[name][::step, ::step] > 0).astype(np.float32), levels=[0.5], colors="#ffd700",
                   linewidths=0.6)
        ax.set_title(titles[name], fontsize=9)
        ax.set_xlabel(axes_names[name][0], fontsize=8)
        ax.set_ylabel(axes_names[name][1], fontsize=8)
        ax.tick_params(labelsize=7)
    from matplotlib.patches import Patch

    names = size_bin_labels(bins_um3)
    handles = [Patch(color=CLASS_COLORS[i % len(CLASS_COLORS)], label=f"{n} µm³") for i, n in enumerate(names)]
    handles.append(Patch(color=NOISE_COLOR, label="noise voids"))
    handles.append(Patch(facecolor="none", edgecolor="#ffd700", label="particle outline"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Orthogonal sections through the particle centre, pores by volume class", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return _save(fig, path)
