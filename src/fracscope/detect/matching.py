"""One-to-one matching of predicted to ground-truth instances by IoU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class MatchResult:
    """Outcome of matching two instance label maps.

    tp: matched pairs (IoU >= threshold); fp: unmatched predictions; fn: unmatched
    ground-truth instances. pairs: (gt_id, pred_id) per match, ious: their IoU.
    """

    tp: int
    fp: int
    fn: int
    pairs: list[tuple[int, int]]
    ious: np.ndarray

    @property
    def recall(self) -> float:
        """Fraction of ground-truth instances matched (1.0 when there are none)."""
        n = self.tp + self.fn
        return self.tp / n if n else 1.0

    @property
    def precision(self) -> float:
        """Fraction of predictions matched (1.0 when there are none)."""
        n = self.tp + self.fp
        return self.tp / n if n else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        n = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / n if n else 1.0


def iou_table(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (gt, pred) pair, computed sparsely.

    Returns
    -------
    (gt_ids, pred_ids, ious) : three 1-D arrays over the pairs that share >= 1 pixel.
    """
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError("gt and pred must have the same shape")
    k = int(pred.max(initial=0)) + 1
    gt_area = np.bincount(gt)
    pred_area = np.bincount(pred, minlength=k)
    both = (gt > 0) & (pred > 0)
    codes, inter = np.unique(gt[both] * k + pred[both], return_counts=True)
    g, p = codes // k, codes % k
    union = gt_area[g] + pred_area[p] - inter
    return g, p, inter / union


def match_instances(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> MatchResult:
    """Match instances one-to-one, maximising total IoU (Hungarian), keeping IoU >= `iou`.

    Parameters
    ----------
    gt, pred : ndarray
        Instance label maps of one shape (0 = background).
    iou : float
        Smallest IoU of a match. At >= 0.5 a match is unique anyway; the assignment
        matters for lower thresholds.

    Returns
    -------
    MatchResult
    """
    gt_ids = np.unique(gt)
    gt_ids = gt_ids[gt_ids > 0]
    pred_ids = np.unique(pred)
    pred_ids = pred_ids[pred_ids > 0]
    g, p, v = iou_table(gt, pred)
    keep = v >= iou
    g, p, v = g[keep], p[keep], v[keep]
    pairs: list[tuple[int, int]] = []
    ious: list[float] = []
    if v.size:
        ug, gi = np.unique(g, return_inverse=True)
        up, pi = np.unique(p, return_inverse=True)
        cost = np.zeros((ug.size, up.size))
        cost[gi, pi] = v
        rows, cols = linear_sum_assignment(cost, maximize=True)
        for r, c in zip(rows, cols, strict=True):
            if cost[r, c] >= iou and cost[r, c] > 0:
                pairs.append((int(ug[r]), int(up[c])))
                ious.append(float(cost[r, c]))
    tp = len(pairs)
    return MatchResult(tp=tp, fp=int(pred_ids.size) - tp, fn=int(gt_ids.size) - tp, pairs=pairs, ious=np.asarray(ious))
