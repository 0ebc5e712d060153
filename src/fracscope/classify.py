"""Decide "broken" from the connectivity of the predicted crack mask (numpy only: inference needs no torch).

Broken means the cracks split the section into fragments: a global connectivity
property a CNN's pooled features may learn poorly. The phase head's crack mask makes
it explicit: fragments >= 2 means broken; otherwise the class head chooses between
intact and mildly damaged.
"""

from __future__ import annotations

import numpy as np

from fracscope.measure import MIN_FRAGMENT_FRACTION, count_fragments
from fracscope.types import CLASS_NAMES, Phase

INTACT, MILDLY, BROKEN = (CLASS_NAMES.index(n) for n in ("intact", "mildly_damaged", "broken"))


def combine_class_with_topology(
    probs: np.ndarray,
    phase_pred: np.ndarray,
    mask: np.ndarray,
    min_fragment_fraction: float = MIN_FRAGMENT_FRACTION,
) -> np.ndarray | int:
    """Class indices from the class head corrected by crack topology.

    Parameters
    ----------
    probs : ndarray, shape (N, 3) or (3,)
        Class probabilities in CLASS_NAMES order.
    phase_pred : ndarray of int, shape (N, H, W) or (H, W)
        Predicted phase codes.
    mask : ndarray of bool, shape (N, H, W) or (H, W)
        Each particle's own mask.
    min_fragment_fraction : float
        Fragments smaller than this fraction of the mask are crumbs (see
        `fracscope.measure.count_fragments`).

    Returns
    -------
    ndarray of int64, shape (N,), or int for a single particle
        Broken where the predicted cracks leave >= 2 fragments; otherwise intact or
        mildly damaged, whichever has the larger head probability once the head's
        broken probability is folded into "damaged" (the head saw cracks, the
        topology says they do not split the particle).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        return int(combine_class_with_topology(probs[None], np.asarray(phase_pred)[None], np.asarray(mask)[None],
                                               min_fragment_fraction)[0])
    phase_pred = np.asarray(phase_pred)
    mask = np.asarray(mask, dtype=bool)
    out = np.empty(len(probs), dtype=np.int64)
    for i in range(len(probs)):
        crack = mask[i] & (phase_pred[i] == Phase.CRACK)
        out[i] = class_from_fragments(probs[i], count_fragments(mask[i], crack, min_fraction=min_fragment_fraction))
    return out


def class_from_fragments(probs: np.ndarray, n_fragments: int) -> int:
    """The topology rule for one particle whose crack fragments are already counted.

    Broken when the cracks leave >= 2 fragments; otherwise intact or mildly damaged,
    whichever is larger once the head's broken probability is folded into "damaged".
    """
    if n_fragments >= 2:
        return BROKEN
    return MILDLY if probs[MILDLY] + probs[BROKEN] > probs[INTACT] else INTACT
