"""Trim a detector's particle mask where the phase model sees matrix at its rim.

A detector mask that spills past the particle edge puts epoxy matrix inside the
particle. The matrix is as dark as a pore, so the porosity goes up. The phase head
was trained on perturbed (eroded and dilated) masks, so it says "background" where
the true particle is not, whatever mask it was given. Where a mask runs wide all
round, it calls part of that dark rim "pore" instead, so `background_or_pore` trims
those too (at the price of real pores open to the particle edge).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fracscope.types import Phase

# infer.py `trim_rim` modes: the phases a rim pixel may be called to be trimmed.
RIM_TRIM_PHASES: dict[str, tuple[int, ...]] = {
    "none": (),
    "background": (Phase.BACKGROUND,),
    "background_or_pore": (Phase.BACKGROUND, Phase.PORE),
}


def most_likely_one_of(prob: np.ndarray, mask: np.ndarray, phases: Sequence[int]) -> np.ndarray:
    """Mask pixels whose most likely phase is one of `phases`.

    Parameters
    ----------
    prob : ndarray of float, shape (P, H, W)
        Phase probabilities, summing to 1 per pixel.
    mask : ndarray of bool, shape (H, W)
    phases : sequence of int
        Phase codes (`fracscope.types.Phase`).

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    phases = list(phases)
    if not phases:
        return np.zeros(mask.shape, bool)
    # A phase can only win where it has at least 1/P: test those few candidates, not every pixel.
    candidates = mask & (prob[phases].max(axis=0) >= 1.0 / prob.shape[0])
    if candidates.any():
        p = prob[:, candidates]
        candidates[candidates] = np.isin(np.argmax(p, axis=0), phases)
    return candidates


def trim_rim(mask: np.ndarray, not_particle: np.ndarray) -> np.ndarray:
    """The mask without its `not_particle` pixels that connect to the outside.

    Only pixels reachable from the box edge through `not_particle` and non-mask pixels
    are removed (4-connectivity): background the model sees deep inside the particle, say
    in a large pore, is not the rim and stays, and so does background around a hole the
    detector left in the mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        One particle's mask (its bounding box is enough; the box edge counts as outside).
    not_particle : ndarray of bool, shape (H, W)
        Where the phase model's most likely phase says "not this particle" (background,
        or background or pore; `most_likely_one_of`).

    Returns
    -------
    ndarray of bool, shape (H, W)
        The trimmed mask, a subset of `mask`. Empty only when every mask pixel is
        `not_particle` connected to the outside.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != np.shape(not_particle):
        raise ValueError(f"mask {mask.shape} and not_particle {np.shape(not_particle)} differ in shape")
    not_particle = np.asarray(not_particle, bool) & mask
    if not not_particle.any():
        return mask
    # One labelling pass instead of an iterated dilation: the padded ring joins the whole box edge,
    # so what is reachable from outside is the ring's component.
    # (OpenCV's 4-connected labelling: scipy's ndi.label up to the label order, about 2x faster.)
    _, components = cv2.connectedComponents(np.pad(~mask | not_particle, 1, constant_values=True).view(np.uint8),
                                            connectivity=4)
    reached = components[1:-1, 1:-1] == components[0, 0]
    return mask & ~reached
