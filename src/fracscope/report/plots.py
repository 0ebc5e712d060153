"""Summary plots (matplotlib, Agg backend, nothing shown on screen)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fracscope.report.summary import ParticleScan, Summary, display_name
from fracscope.types import CLASS_NAMES

PLOTS_DIR = "plots"
CLASS_COLORS: dict[str, str] = {"intact": "#2ca02c", "mildly_damaged": "#ff7f0e", "broken": "#d62728"}
CLASS_LABELS: dict[str, str] = {"intact": "intact", "mildly_damaged": "mildly damaged", "broken": "broken"}


def _group_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _save(fig: Figure, path: Path) -> Path:
    # Figure() without pyplot uses the Agg canvas: no display, no global figure state.
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_class_fractions(summary: Summary, path: Path) -> Path:
    """Bars of class percentages per group with bootstrap 95 % intervals (over images)."""
    groups = summary.groups or [summary.total]
    fig = Figure(figsize=(max(5.5, 1.6 + 1.3 * len(groups) * 0.9), 4.0))
    ax = fig.add_subplot()
    x = np.arange(len(CLASS_NAMES))
    width = 0.8 / len(groups)
    for i, (g, color) in enumerate(zip(groups, _group_colors(len(groups)))):
        pct = np.array([g.pct[c] for c in CLASS_NAMES], dtype=float)
        lo = np.array([g.bootstrap_pct[c][0] for c in CLASS_NAMES], dtype=float)
        hi = np.array([g.bootstrap_pct[c][1] for c in CLASS_NAMES], dtype=float)
        err = np.vstack([np.clip(pct - lo, 0, None), np.clip(hi - pct, 0, None)])
        pos = x - 0.4 + width * (i + 0.5)
        label = f"{display_name(g.name)} (n = {g.n_particles_counted})"
        ax.bar(pos, np.nan_to_num(pct), width * 0.92, color=color, label=label)
        ax.errorbar(pos, pct, yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(x, [CLASS_LABELS[c] for c in CLASS_NAMES])
    ax.set_ylabel("particles (%)")
    ax.set_ylim(0, 105)
    title = "Damage class fractions (95 % CI, bootstrap over images)"
    t = summary.test
    if t is not None and t.test_name != "none":
        title += f"\n{t.test_name}: p = {t.p_value:.2g}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_porosity_hist(summary: Summary, scan: ParticleScan, path: Path) -> Path:
    """Histogram of section porosity (complete sections) per group."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    sel = scan.complete & np.isfinite(scan.porosity_pct)
    values = scan.porosity_pct[sel]
    hi = float(np.nanmax(values)) if values.size else 1.0
    bins = np.linspace(0.0, max(hi * 1.05, 1.0), 31)
    for i, (g, color) in enumerate(zip(scan.groups, _group_colors(len(scan.groups)))):
        v = scan.porosity_pct[sel & (scan.group == i)]
        if v.size:
            label = f"{display_name(g)} (n = {v.size}, mean {v.mean():.2f} %)"
            ax.hist(v, bins=bins, histtype="step", lw=1.8, color=color, label=label)
    ax.set_xlabel("porosity (%) — pore pixels / section pixels, Eq. 1")
    ax.set_ylabel("sections")
    ax.set_title("Porosity of complete particle sections", fontsize=10)
    if values.size:
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no complete sections", ha="center", va="center", transform=ax.transAxes)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_radial_profile(summary: Summary, path: Path) -> Path:
    """Porosity inside circles of radius r/R = 50 … 100 %, mean ± SD per group."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    groups = summary.groups or [summary.total]
    for g, color in zip(groups, _group_colors(len(groups))):
        rp = g.radial_profile
        f = 100 * np.asarray(rp["fractions"], dtype=float)
        m = np.array([np.nan if v is None else v for v in rp["mean_pct"]], dtype=float)
        s = np.array([np.nan if v is None else v for v in rp["sd_pct"]], dtype=float)
        n = max(rp["n"]) if rp["n"] else 0
        if n == 0:
            continue
        ax.plot(f, m, "o-", color=color, label=f"{display_name(g.name)} (n = {n})")
        ax.fill_between(f, m - s, m + s, color=color, alpha=0.2, lw=0)
    ax.set_xlabel("circle radius r / R (%)  (R: radius of the equal-area circle)")
    ax.set_ylabel("porosity inside circle (%)")
    ax.set_title("Radial porosity profile (mean ± SD over sections)", fontsize=10)
    ax.set_xlim(45, 105)
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def plot_size_distribution(scan: ParticleScan, path: Path) -> Path:
    """Equivalent-diameter histogram per class (counted particles with a known pixel size)."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    sel = scan.counted & np.isfinite(scan.eq_diameter_um)
    d = scan.eq_diameter_um[sel]
    if d.size:
        bins = np.linspace(0.0, float(d.max()) * 1.05 + 1e-6, 31)
        for i, c in enumerate(CLASS_NAMES):
            v = scan.eq_diameter_um[sel & (scan.class_idx == i)]
            if v.size:
                label = f"{CLASS_LABELS[c]} (n = {v.size})"
                ax.hist(v, bins=bins, histtype="step", lw=1.8, color=CLASS_COLORS[c], label=label)
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no particles with a known pixel size", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("equivalent circle diameter (µm)")
    ax.set_ylabel("particles")
    ax.set_title("Section size by damage class (all groups)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)


def write_plots(summary: Summary, scan: ParticleScan, output_dir: str | os.PathLike) -> list[Path]:
    """All summary plots into `<output_dir>/plots/`; returns their paths."""
    out = Path(output_dir) / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_class_fractions(summary, out / "class_fractions.png"),
        plot_porosity_hist(summary, scan, out / "porosity_hist.png"),
        plot_radial_profile(summary, out / "radial_profile.png"),
        plot_size_distribution(scan, out / "size_distribution.png"),
    ]
