"""Numpy scores shared by training, evaluation and the accuracy benchmark (no torch needed).

Porosity always goes through `fracscope.measure.porosity_pct` (Eq. 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from fracscope.measure import porosity_pct
from fracscope.types import CLASS_NAMES, Phase

IGNORE_PHASE = 255
IGNORE_CLASS = -1


def porosity_errors_pp(pred_phases: np.ndarray, true_phases: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Predicted minus true porosity (percentage points), one value per particle.

    Parameters
    ----------
    pred_phases, true_phases : ndarray, shape (N, H, W)
        Phase codes; true maps that are all IGNORE_PHASE (unknown) give NaN.
    masks : ndarray of bool, shape (N, H, W)
        Each particle's mask (Eq. 1 denominator).
    """
    out = np.full(len(masks), np.nan)
    for i, (p, t, m) in enumerate(zip(pred_phases, true_phases, masks)):
        m = np.asarray(m, dtype=bool)
        if not m.any() or np.all(t[m] == IGNORE_PHASE):
            continue
        out[i] = porosity_pct(p, m) - porosity_pct(t, m)
    return out


def drop_small_components(binary: np.ndarray, min_px: int) -> np.ndarray:
    """`binary` without its 8-connected components smaller than `min_px` pixels."""
    binary = np.asarray(binary, dtype=bool)
    if min_px <= 1 or not binary.any():
        return binary
    labels, n = ndi.label(binary, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


@dataclass
class IoUAccumulator:
    """Pooled (dataset-level) intersection over union of one phase code.

    With ``min_true_px > 1`` true components smaller than that are ignored: pixels of
    tiny true pores count neither as hits nor as misses (they are below what a
    threshold or a person can annotate reliably at that pixel size).
    """

    code: int
    min_true_px: int = 1
    intersection: int = 0
    union: int = 0

    def update(self, pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> None:
        for p, t in zip(np.asarray(pred), np.asarray(true)):
            v = t != IGNORE_PHASE
            tb = t == self.code
            if self.min_true_px > 1:
                small = tb & ~drop_small_components(tb, self.min_true_px)
                v &= ~small
                tb &= ~small
            pb = (p == self.code) & v
            tb &= v
            self.intersection += int(np.count_nonzero(pb & tb))
            self.union += int(np.count_nonzero(pb | tb))

    def compute(self) -> float:
        return float(self.intersection / self.union) if self.union else float("nan")


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n: int = len(CLASS_NAMES)) -> np.ndarray:
    """Counts, rows true and columns predicted; unknown true labels (< 0) are skipped."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    ok = true >= 0
    return np.bincount(n * true[ok] + pred[ok], minlength=n * n).reshape(n, n)


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's κ from a confusion matrix (agreement beyond chance)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return float("nan")
    po = np.trace(cm) / total
    pe = float((cm.sum(0) * cm.sum(1)).sum()) / total**2
    return float((po - pe) / (1 - pe)) if pe < 1 else 1.0


@dataclass
class ClassScores:
    """Accuracy, macro-F1, per-class recall and κ of one confusion matrix."""

    confusion: np.ndarray
    names: tuple[str, ...] = CLASS_NAMES
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_labels(cls, true: np.ndarray, pred: np.ndarray) -> ClassScores:
        """Scores of predicted class indices against the true ones (CLASS_NAMES order)."""
        return cls(confusion_matrix(true, pred))

    @property
    def accuracy(self) -> float:
        t = self.confusion.sum()
        return float(np.trace(self.confusion) / t) if t else float("nan")

    @property
    def recall(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.confusion.sum(1)

    @property
    def precision(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.diag(self.confusion) / self.confusion.sum(0)

    @property
    def macro_f1(self) -> float:
        p, r = self.precision, self.recall
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        present = self.confusion.sum(1) > 0
        return float(np.nanmean(f1[present])) if present.any() else float("nan")

    @property
    def kappa(self) -> float:
        return cohen_kappa(self.confusion)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}kappa": self.kappa,
        }
        for name, r in zip(self.names, self.recall):
            out[f"{prefix}recall_{name}"] = float(r)
        return out


def otsu_porosity_pct(image: np.ndarray, mask: np.ndarray) -> float:
    """The paper's method: one global Otsu threshold, dark pixels inside the mask are pores.

    The threshold is taken over the whole image given (the crop, matrix included),
    as a global ImageJ-style threshold would be; cracks, being dark, count as pores.
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    t = threshold_otsu(image)
    phases = np.where(image < t, Phase.PORE, Phase.SOLID).astype(np.uint8)
    return porosity_pct(phases, np.asarray(mask, dtype=bool))
