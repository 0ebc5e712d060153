"""Figures written next to a run: confusion matrix, validation gallery, error sheet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracscope.types import CLASS_NAMES

# Phase colours: background black, solid grey, pore blue, crack red; ignore = yellow.
_PHASE_RGB = np.array([[0, 0, 0], [150, 150, 150], [40, 110, 255], [240, 40, 40]], dtype=np.uint8)


def phase_rgb(phases: np.ndarray) -> np.ndarray:
    """RGB image of a phase map (unknown/ignored pixels yellow)."""
    phases = np.asarray(phases)
    out = np.full((*phases.shape, 3), (230, 200, 0), dtype=np.uint8)
    known = phases < len(_PHASE_RGB)
    out[known] = _PHASE_RGB[phases[known]]
    return out


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100)


def plot_confusion(cm: np.ndarray, path: str | Path | None = None, names: tuple[str, ...] = CLASS_NAMES, title: str = ""):
    """Confusion matrix figure (rows true, columns predicted; row-normalised colours)."""
    cm = np.asarray(cm)
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot(111)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    short = [n.replace("_", "\n") for n in names]
    ax.set_xticks(range(len(names)), short)
    ax.set_yticks(range(len(names)), short)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


@dataclass
class GalleryItem:
    """One crop with its truth and prediction, for galleries and error sheets."""

    image: np.ndarray
    mask: np.ndarray
    true_phases: np.ndarray | None
    pred_phases: np.ndarray
    true_class: int
    pred_class: int
    prob: float


def plot_gallery(items: list[GalleryItem], path: str | Path | None = None, title: str = ""):
    """Rows of (crop with mask outline, true phases, predicted phases), titled with classes."""
    n = len(items)
    fig = _figure(6.6, 2.2 * max(n, 1) + 0.4)
    for r, it in enumerate(items):
        axes = [fig.add_subplot(n, 3, 3 * r + k + 1) for k in range(3)]
        axes[0].imshow(it.image, cmap="gray", vmin=0, vmax=1)
        axes[0].contour(it.mask, levels=[0.5], colors="lime", linewidths=0.6)
        tc = CLASS_NAMES[it.true_class] if it.true_class >= 0 else "?"
        axes[0].set_title(f"true {tc}\npred {CLASS_NAMES[it.pred_class]} ({it.prob:.2f})", fontsize=7,
                          color="black" if it.true_class == it.pred_class else "red")
        if it.true_phases is not None:
            axes[1].imshow(phase_rgb(it.true_phases))
        axes[1].set_title("true phases", fontsize=7)
        axes[2].imshow(phase_rgb(it.pred_phases))
        axes[2].set_title("predicted phases", fontsize=7)
        for a in axes:
            a.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def plot_contact_sheet(items: list[GalleryItem], path: str | Path, cols: int = 6, title: str = "") -> None:
    """A grid of crops (mask outlined), each titled true → predicted (probability)."""
    n = max(len(items), 1)
    rows = (n + cols - 1) // cols
    fig = _figure(1.7 * cols, 1.9 * rows + 0.4)
    for k, it in enumerate(items):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(it.image, cmap="gray", vmin=0, vmax=1)
        ax.contour(it.mask, levels=[0.5], colors="lime", linewidths=0.5)
        tc = CLASS_NAMES[it.true_class] if it.true_class >= 0 else "?"
        ax.set_title(f"{tc[:6]} → {CLASS_NAMES[it.pred_class][:6]}\np={it.prob:.2f}", fontsize=6)
        ax.set_axis_off()
    if not items:
        fig.text(0.5, 0.5, "no misclassified particles", ha="center")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
