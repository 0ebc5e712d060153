"""Trim a detector's particle mask where the phase model sees matrix at its rim.

A detector mask that spills past the particle edge puts epoxy matrix inside the
particle. The matrix is as dark as a pore, so the porosity goes up. The phase head
was trained on perturbed (eroded and dilated) masks, so it says "background" where
the true particle is not, whatever mask it was given.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def trim_background_rim(mask: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The mask without its background pixels that connect to the outside.

    Only background reachable from the box edge through background and non-mask pixels
    is removed (4-connectivity): background the model sees deep inside the particle, say
    in a large pore, is not the rim and stays, and so does background around a hole the
    detector left in the mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        One particle's mask (its bounding box is enough; the box edge counts as outside).
    background : ndarray of bool, shape (H, W)
        Where the phase model's most likely phase is background.

    Returns
    -------
    ndarray of bool, shape (H, W)
        The trimmed mask, a subset of `mask`. Empty only when every mask pixel is
        background connected to the outside.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != np.shape(background):
        raise ValueError(f"mask {mask.shape} and background {np.shape(background)} differ in shape")
    background = np.asarray(background, bool) & mask
    if not background.any():
        return mask
    # One labelling pass instead of an iterated dilation: the padded ring joins the whole box edge,
    # so what is reachable from outside is the ring's component.
    components, _ = ndi.label(np.pad(~mask | background, 1, constant_values=True))
    reached = components[1:-1, 1:-1] == components[0, 0]
    return mask & ~reached
