"""Phases on the image grid: phase probabilities → phase codes on each particle's own pixels.

Two sources of probabilities, one rule for turning them into codes:

- the native-resolution phase model (`fracscope.phase_map`, the default): probabilities for
  every image pixel, reduced at once to `ImagePhaseCodes`; `particle_phases` then reads one
  particle: its mask-edge pixels the model calls "not particle" are trimmed (optional), and
  inside the mask the most likely of solid, pore and crack wins; then, by default, pores the argmax
  resolves keep its outline and the other pore pixels are re-chosen so that their count is the model's
  expected count (`pores_by_expected_count`, ``pore_count=resolved``): the argmax drops pores a pixel or
  two across whose pore probability stays under one half, so porosity fell ~16 % short on the fine-pore
  preset. No correction factor.
- the crop model (``segmenter=crops``, the earlier route), below:

The one implementation of this step, used by `fracscope.pipeline` (particles of 2-D images)
and by `fracscope.pores3d.segment.ModelVoids` (the particle section of each slice of a stack):

1. `predict_crops`: the model on the particles' crops (one batched pass, both heads);
2. `phases_on_image_grid`, per particle: the crop-grid probabilities are pasted back onto the
   particle's bounding box, the mask-edge pixels the model calls "not particle" are trimmed
   (optional), the pore probability is scaled by the pore weight, and inside the mask the most
   likely of solid, pore and crack wins.

A phase model that predicts on the image's own grid replaces the paste-back here and nowhere
else. Also here, because both callers apply it to the same model file: which pore weight holds
(`resolve_pore_weight`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fracscope.crop import paste_back
from fracscope.refine import most_likely_one_of, trim_rim
from fracscope.types import CLASS_NAMES, ParticleCrop, Phase

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), end-exclusive, source-image pixels


def predict_crops(backend: Any, crops: Sequence[ParticleCrop], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, 3) and phase probabilities (N, 4, S, S) for a list of crops.

    `backend`: a `fracscope.runtime.Backend`, or any object with ``metadata.crop_size`` and
    ``predict_batched``.
    """
    if not crops:
        s = backend.metadata.crop_size
        return np.zeros((0, len(CLASS_NAMES)), np.float32), np.zeros((0, 4, s, s), np.float32)
    x = np.stack([np.stack([c.image, c.mask]) for c in crops]).astype(np.float32, copy=False)
    return backend.predict_batched(x, batch_size)


def resolve_pore_weight(metadata: Any, override: float | None = None) -> float:
    """The pore weight that holds: the run's `override`, else the model file's own (1.0 where it has none).

    Bilinear paste-back shrinks small pores; the weight, tuned per model and stored in the
    model file, corrects that. A weight <= 0 would erase (or invert) the pore phase: refused.
    """
    weight = getattr(metadata, "pore_weight", 1.0) if override is None else override
    if not weight > 0:
        raise ValueError(f"pore_weight must be positive (or null for the model's own), got {weight}")
    return float(weight)


@dataclass(frozen=True)
class PhaseRule:
    """How probabilities become phase codes: the same for every particle of a run.

    pore_weight : factor on the pore probability after the paste-back (`resolve_pore_weight`).
    trim_phases : phase codes that, as the most likely phase of a mask-edge pixel, take that
        pixel out of the particle (`fracscope.refine.RIM_TRIM_PHASES`); () = no trim.
    """

    pore_weight: float = 1.0
    trim_phases: tuple[int, ...] = ()


@dataclass(frozen=True)
class CropPhases:
    """One particle's phase probabilities on its crop grid, and where the particle lies.

    probs : float (4, S, S), phase probabilities (background, solid, pore, crack) on the crop.
    crop : the crop they were predicted on (its window places them on the image).
    box : the particle's own bounding box on the image.
    mask : bool (row1 - row0, col1 - col0), the particle's pixels in `box`.
    """

    probs: np.ndarray
    crop: ParticleCrop
    box: Box
    mask: np.ndarray


@dataclass(frozen=True)
class ParticlePhases:
    """One particle's phases on the image grid, within its bounding box.

    mask : bool, the particle after the rim trim (the input mask when the trim is off, finds
        nothing, or would take every pixel).
    phases : uint8 `Phase` codes; solid, pore or crack inside `mask`, background outside.
    """

    mask: np.ndarray
    phases: np.ndarray


def phases_on_image_grid(particle: CropPhases, rule: PhaseRule) -> ParticlePhases:
    """Phase codes of one particle on the image's own pixels (module docstring, step 2)."""
    own = np.asarray(particle.mask, bool)
    prob = paste_back(particle.probs, particle.crop, particle.box)
    if rule.trim_phases:
        # Before the pore weight: matrix and pore look alike, and the weight would keep the rim as pore.
        trimmed = trim_rim(own, most_likely_one_of(prob, own, rule.trim_phases))
        if trimmed.any():
            own = trimmed
    prob[Phase.PORE] *= rule.pore_weight
    # Inside the (trimmed) mask a pixel is solid, pore or crack: background is not an option.
    phases = (np.argmax(prob[1:], axis=0) + 1).astype(np.uint8)
    phases[~own] = Phase.BACKGROUND
    return ParticlePhases(own, phases)


# ------------------------------------------------------------------------------------------------
# The native-resolution route
# ------------------------------------------------------------------------------------------------


# Pore probabilities under this are the model's floor across solid grain (0.2-0.3 % of a section's area in
# sum on tuning fields): not counted towards a section's expected pore pixels.
PORE_PROBABILITY_FLOOR = 0.1
PORE_COUNTS = ("resolved", "expected", "argmax")  # how many pore pixels a section gets (`particle_phases`)
# A pore-probability region holding this many argmax pore pixels is a pore the argmax resolves
# (`pores_by_expected_count` with ``pore_count=resolved``). Chosen on tuning seeds 555 / 556 over 1-16 px:
# per-section porosity MAE 0.303-0.310 / 0.419-0.438 pp at 4-16 against 0.359 / 0.462 for the expected
# count everywhere; 8 kept the fine-pore preset's bias closest to the expected count's.
RESOLVED_PORE_PX = 8


@dataclass(frozen=True)
class ImagePhaseCodes:
    """The phase model's verdict on every pixel of one image, in 3 bytes per pixel.

    best : uint8 (H, W), the most likely of the four phases (background included): what the
        rim trim reads.
    inside : uint8 (H, W), the most likely of solid, pore and crack: what a pixel inside a
        particle is.
    pore_probability : uint8 (H, W), the pore probability × 255, or None: what the expected pore count reads.
    """

    best: np.ndarray
    inside: np.ndarray
    pore_probability: np.ndarray | None = None


def codes_from_probs(probs: np.ndarray, pore_weight: float = 1.0) -> ImagePhaseCodes:
    """`ImagePhaseCodes` of phase probabilities (4, H, W) in `Phase` order, the pore probability
    multiplied by `pore_weight` first (a phase model's `pore_decision_weight`)."""
    probs = np.asarray(probs)
    if pore_weight != 1.0:
        probs = probs.copy()
        probs[Phase.PORE] *= np.float32(pore_weight)
    background, solid, pore, crack = (probs[k] for k in (Phase.BACKGROUND, Phase.SOLID, Phase.PORE, Phase.CRACK))
    # np.argmax over the channel axis, plane by plane (ties go to the earlier phase, as argmax's): the same codes
    # about 10x faster, as argmax along the first axis of a (4, H, W) array walks it with a stride of H x W.
    inside = np.where(pore > solid, np.uint8(Phase.PORE), np.uint8(Phase.SOLID))
    top = np.maximum(solid, pore)
    inside[crack > top] = Phase.CRACK
    np.maximum(top, crack, out=top)
    best = np.where(background >= top, np.uint8(Phase.BACKGROUND), inside)
    pore_probability = np.rint(np.clip(pore, 0.0, 1.0) * 255).astype(np.uint8)
    return ImagePhaseCodes(best, inside, pore_probability)


def check_pore_count(value: object) -> str:
    """`value` as a `PORE_COUNTS` entry (infer.py's `pore_count`); a ValueError names the valid ones."""
    if value not in PORE_COUNTS:
        raise ValueError(f"pore_count must be one of {list(PORE_COUNTS)}, got {value!r}")
    return str(value)


def pores_by_expected_count(phases: np.ndarray, pore_probability: np.ndarray, mask: np.ndarray,
                            floor: float = PORE_PROBABILITY_FLOOR, resolved_px: int | None = None) -> np.ndarray:
    """`phases` (uint8 codes) with the pore pixels re-chosen inside `mask`: among the pixels not called
    crack, as many as their expected pore count (the sum of their pore probabilities, uint8 × 255, that
    reach `floor`, rounded) become pore, those of highest pore probability; the rest solid.

    The argmax keeps a pixel only where the pore is the most likely phase, so a pore a pixel or two
    across, whose probability is spread over its neighbours, is lost; the expected count keeps its
    area. Ties go to pixels the argmax already called pore. Cracks and the outside stay as they are.

    With `resolved_px` (``pore_count=resolved``): a pore the argmax resolves, i.e. a connected region
    (8-neighbours) of pixels reaching `floor` that holds at least `resolved_px` argmax pore pixels, keeps
    the argmax's outline; only the other pixels share their expected count. The pore probability spills
    0.1-0.4 onto the neighbours of a resolved pore or channel, and counting it added per-section noise
    (BENCHMARKS "Resolved pores keep their outline").
    """
    phases = np.asarray(phases)
    open_ = np.asarray(mask, bool) & (phases != Phase.CRACK)  # a crack pixel's pore share has nowhere to go
    # The count never exceeds the pixels that reach the floor (each adds at most 1): only they are ranked.
    q = np.asarray(pore_probability)
    candidate = open_ & (q >= np.ceil(floor * 255 - 1e-9))
    rows, cols = np.nonzero(candidate)
    p = q[rows, cols]
    was_pore = phases[rows, cols] == Phase.PORE
    out = phases.copy()
    out[open_ & (phases == Phase.PORE)] = Phase.SOLID
    if resolved_px is not None and was_pore.any():
        import cv2

        n, labels = cv2.connectedComponents(candidate.view(np.uint8), connectivity=8)
        region = labels[rows, cols]
        resolved = (np.bincount(region, weights=was_pore, minlength=n) >= resolved_px)[region]
        out[rows[resolved & was_pore], cols[resolved & was_pore]] = Phase.PORE
        rows, cols, p, was_pore = rows[~resolved], cols[~resolved], p[~resolved], was_pore[~resolved]
    k = int(round(int(p.sum(dtype=np.int64)) / 255))
    order = np.lexsort((~was_pore, -p.astype(np.int16)))  # highest probability first, the argmax's pores first
    out[rows[order[:k]], cols[order[:k]]] = Phase.PORE
    return out


def particle_phases(codes: ImagePhaseCodes, box: Box, own: np.ndarray, trim_phases: tuple[int, ...] = (),
                    pore_count: str = "resolved") -> ParticlePhases:
    """Phase codes of one particle (mask `own` in `box`) from the whole image's codes.

    pore_count : "resolved" (pores the argmax resolves keep its outline, the rest of the pore
        probability is counted as expected: `pores_by_expected_count` with `RESOLVED_PORE_PX`),
        "expected" (the expected count over the whole section) or "argmax" (the most likely phase of
        each pixel). The first two need the codes' pore probability; without it, argmax.
    """
    check_pore_count(pore_count)
    r0, c0, r1, c1 = box
    own = np.asarray(own, bool)
    if trim_phases:
        rim = np.isin(codes.best[r0:r1, c0:c1], trim_phases) & own
        trimmed = trim_rim(own, rim)
        if trimmed.any():
            own = trimmed
    phases = codes.inside[r0:r1, c0:c1].copy()
    phases[~own] = Phase.BACKGROUND
    if pore_count != "argmax" and codes.pore_probability is not None:
        resolved_px = RESOLVED_PORE_PX if pore_count == "resolved" else None
        phases = pores_by_expected_count(phases, codes.pore_probability[r0:r1, c0:c1], own, resolved_px=resolved_px)
    return ParticlePhases(own, phases)
