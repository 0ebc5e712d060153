"""Particle and pore segmentation of a stack, slice by slice.

Every voxel becomes one of three phase codes (uint8, as `fracscope.types.Phase`):
0 outside the particle, 1 solid, 2 void (pore candidate). As in the seed paper's
Dragonfly workflow, solid and void are separated by a grey-level threshold:

- ``otsu``: one Otsu threshold over the whole stack, from its histogram (the paper);
- ``local``: the midpoint between the local solid and local void grey levels (Gaussian
  averages over ``local_window_um`` around each pixel, seeded by the slice's own Otsu split
  where that separates two phases, else the stack's), which follows shading within a slice
  and brightness drift between slices;
- ``fixed``: a given grey value;
- ``model``: the trained 2-D model applied slice by slice inside the particle section
  (`ModelVoids`); the particle outline still comes from the Otsu threshold.

Which side of the threshold is void is the pore polarity: dark (empty pores) or bright (Pt- or
resin-filled); under ``auto`` it is decided once per stack (`stack_pore_polarity`).

The particle is the filled section: in each slice the solid is closed with a disc of
``envelope_closing_um`` (bridging pore mouths at the surface) and its holes are filled. Pores
are the void voxels inside it. Slice-wise work keeps memory bounded by one chunk of slices.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from fracscope.crop import crop_particle
from fracscope.polarity import check_pore_polarity_setting, fill_darkened
from fracscope.phases import CropPhases, PhaseRule, phases_on_image_grid, predict_crops, resolve_pore_weight
from fracscope.pores3d.stack import Stack
from fracscope.types import Phase

METHODS: tuple[str, ...] = ("otsu", "local", "fixed", "model")
# Grey values drawn per chunk when a float stack's threshold is estimated from a sample.
_FLOAT_SAMPLE_PER_CHUNK = 200_000


@dataclass(frozen=True)
class SegmentSettings:
    """How solid, void and the particle are told apart (see the module docstring).

    method : "otsu" | "local" | "fixed" | "model".
    threshold : grey value for method "fixed" (voxels on the pore side of it, inclusive, are void).
    pore_polarity : "auto" (decided once per stack, `stack_pore_polarity`), "dark" (empty pores) or
        "bright" (Pt- or resin-filled pores).
    local_window_um : Gaussian sigma of the local grey levels, method "local".
    envelope_closing_um : radius of the disc that closes the solid before hole filling; 0 = none.
    keep_largest : keep only the largest 3-D connected particle (neighbouring particles and
        specks in the embedding are dropped).
    """

    method: str = "otsu"
    threshold: float | None = None
    pore_polarity: str = "auto"
    local_window_um: float = 2.0
    envelope_closing_um: float = 0.2
    keep_largest: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"segment.method must be one of {METHODS}, got {self.method!r}")
        check_pore_polarity_setting(self.pore_polarity)
        if self.method == "fixed" and self.threshold is None:
            raise ValueError("segment.method=fixed needs segment.threshold=<grey value>")
        if self.envelope_closing_um < 0 or self.local_window_um <= 0:
            raise ValueError("segment.envelope_closing_um must be >= 0 and segment.local_window_um > 0")


@dataclass(frozen=True)
class GlobalThreshold:
    """The stack's Otsu threshold and the mean grey levels of the two classes it separates."""

    value: float
    low_mean: float
    high_mean: float

    @property
    def contrast(self) -> float:
        """Difference of the class means (grey levels)."""
        return self.high_mean - self.low_mean


def otsu_from_histogram(counts: np.ndarray, values: np.ndarray) -> GlobalThreshold:
    """Otsu threshold of a histogram (values above it are the bright class) and the class means.

    Parameters
    ----------
    counts : ndarray
        Voxels per grey value.
    values : ndarray
        The grey value of each bin, increasing.
    """
    counts = np.asarray(counts, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        raise ValueError("empty histogram")
    lo, hi = nz[0], nz[-1] + 1
    t = float(values[lo]) if hi - lo < 2 else float(threshold_otsu(hist=(counts[lo:hi], values[lo:hi])))
    low, high = values <= t, values > t
    mean = (lambda m: float((counts[m] * values[m]).sum() / counts[m].sum()) if counts[m].sum() else t)
    return GlobalThreshold(t, mean(low), mean(high))


def stack_threshold(stack: Stack, chunk_z: int) -> GlobalThreshold:
    """Global Otsu threshold of the whole stack, read once in chunks.

    Integer stacks use their exact histogram; float stacks a strided sample of each chunk.
    """
    kind = np.dtype(stack.dtype)
    if kind in (np.dtype(np.uint8), np.dtype(np.uint16)):
        n_bins = 256 if kind == np.uint8 else 65536
        hist = np.zeros(n_bins, np.int64)
        for z0, z1 in stack.chunks(chunk_z):
            hist += np.bincount(stack.read(z0, z1).ravel(), minlength=n_bins)
        return otsu_from_histogram(hist, np.arange(n_bins))
    samples = []
    for z0, z1 in stack.chunks(chunk_z):
        flat = stack.read(z0, z1).ravel()
        step = max(1, flat.size // _FLOAT_SAMPLE_PER_CHUNK)
        samples.append(flat[::step].astype(np.float64))
    sample = np.concatenate(samples)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0 or sample.min() == sample.max():
        raise ValueError("the stack has a single grey value; nothing to threshold")
    t = float(threshold_otsu(sample))
    return GlobalThreshold(t, float(sample[sample <= t].mean()), float(sample[sample > t].mean()))


# How many slices, evenly spaced, `decide_pore_polarity` reads.
_POLARITY_SLICES = 16
# Centre-against-border log-odds of the bright class beyond which the class enriched in the centre is the
# solid (odds 12 times apart); a particle filling the field with more pores in its core stays well below.
_CENTRE_LOG_ODDS = 2.5
# Shares are clipped to this and 1 minus it, so a pure border has finite log-odds.
_SHARE_FLOOR = 1e-3


def _log_odds(share: float) -> float:
    p = min(max(share, _SHARE_FLOOR), 1.0 - _SHARE_FLOOR)
    return float(np.log(p / (1.0 - p)))


def stack_pore_polarity(pixels: np.ndarray, threshold: float) -> str:
    """"dark" or "bright": the pores' polarity in slices `pixels` (n, Y, X) split at `threshold`.

    The 2-D rules (a band around many particles, a mid-grey histogram mode) do not hold in a
    FIB stack of one particle, which fills most of the field. Here the stack's threshold splits
    solid from pore space, and in a FIB stack the pore space is the pores *and* the region
    around the particle (empty or epoxy: dark; Pt-filled: bright, like the pores). The solid is
    the majority phase of the particle, and the particle is what the stack was milled through,
    in the middle of the field:

    - where the bright class's odds in the centre (the middle half in y and x) and in the
      border band (the outer eighth on each side) differ by more than a factor e^2.5 (about 12),
      the class enriched in the centre is the solid: a particle with much outside around it,
      even one that fills less than half of the centre;
    - otherwise (the particle fills the field or nearly, so centre and border read alike; a
      core with more pores than the rim shifts the odds by far less) the majority class of the
      centre is the solid.

    Solid bright → pores dark; solid dark → pores bright.
    """
    bright = np.asarray(pixels) > threshold
    _, h, w = bright.shape
    centre_share = float(bright[:, h // 4 : h - h // 4, w // 4 : w - w // 4].mean())
    by, bx = max(1, h // 8), max(1, w // 8)
    ring = np.ones((h, w), bool)
    ring[by : h - by, bx : w - bx] = False
    border_share = float(bright[:, ring].mean())
    enrichment = _log_odds(centre_share) - _log_odds(border_share)
    solid_bright = enrichment > 0 if abs(enrichment) > _CENTRE_LOG_ODDS else centre_share >= 0.5
    return "dark" if solid_bright else "bright"


def decide_pore_polarity(stack: Stack, threshold: float, n_slices: int = _POLARITY_SLICES) -> str:
    """`stack_pore_polarity` on `n_slices` evenly spaced slices of the stack (read one at a time)."""
    zs = np.unique(np.linspace(0, stack.shape[0] - 1, min(n_slices, stack.shape[0])).round().astype(int))
    pixels = np.stack([stack.read(int(z), int(z) + 1)[0] for z in zs])
    return stack_pore_polarity(pixels, threshold)


def void_mask(pixels: np.ndarray, threshold: float | np.ndarray, polarity: str = "dark") -> np.ndarray:
    """Void (pore-side) pixels: at or below the threshold for dark pores, above it for bright ones."""
    return pixels <= threshold if polarity == "dark" else pixels > threshold


def local_threshold(pixels: np.ndarray, threshold: float, polarity: str, sigma_px: tuple[float, float]) -> np.ndarray:
    """Per-pixel threshold halfway between the local solid and local void grey levels.

    The global `threshold` splits the slice first; each class's grey level is then
    averaged with a Gaussian of `sigma_px` (normalised by the class's own weight). Where a
    class is absent nearby the global threshold stays.
    """
    x = pixels.astype(np.float32)
    void = void_mask(x, threshold, polarity).astype(np.float32)
    solid = 1.0 - void
    levels = []
    for w in (solid, void):
        weight = ndi.gaussian_filter(w, sigma_px, mode="nearest")
        level = ndi.gaussian_filter(x * w, sigma_px, mode="nearest") / np.maximum(weight, 1e-6)
        levels.append((level, weight > 0.02))
    (ls, has_s), (lv, has_v) = levels
    return np.where(has_s & has_v, 0.5 * (ls + lv), np.float32(threshold)).astype(np.float32)


def close_disc(mask: np.ndarray, radius_um: float, pixel_yx_um: tuple[float, float]) -> np.ndarray:
    """Morphological closing with a disc of `radius_um` (exact, by distance transforms).

    The slice is padded first, so objects cut by the slice edge are not eroded there.
    """
    if radius_um <= 0 or not mask.any():
        return mask
    pad = int(np.ceil(radius_um / min(pixel_yx_um))) + 1
    padded = np.pad(mask, pad, mode="edge")
    dilated = ndi.distance_transform_edt(~padded, sampling=pixel_yx_um) <= radius_um
    closed = ndi.distance_transform_edt(dilated, sampling=pixel_yx_um) > radius_um
    return closed[pad:-pad, pad:-pad] | mask


def envelope(solid: np.ndarray, closing_um: float, pixel_yx_um: tuple[float, float]) -> np.ndarray:
    """Filled particle section of one slice: solid, closed with a disc, holes filled."""
    return ndi.binary_fill_holes(close_disc(solid, closing_um, pixel_yx_um))


def phases_from_void(void: np.ndarray, closing_um: float, pixel_yx_um: tuple[float, float]) -> np.ndarray:
    """Phase codes of one slice (0 outside, 1 solid, 2 void) from its void mask."""
    env = envelope(~void, closing_um, pixel_yx_um)
    out = np.zeros(void.shape, np.uint8)
    out[env] = Phase.SOLID
    out[env & void] = Phase.PORE
    return out


class SliceSegmenter:
    """Turns a block of slices into phase codes with fixed settings and thresholds.

    Parameters
    ----------
    settings : SegmentSettings
    threshold : GlobalThreshold or float
        The stack's threshold (methods otsu, local, model) or the fixed grey value.
    pixel_yx_um : (y, x) pixel size, for the closing disc and the local window.
    model : ModelVoids, optional
        Required for method "model".
    """

    def __init__(self, settings: SegmentSettings, threshold: float | GlobalThreshold, pixel_yx_um: tuple[float, float],
                 model: "ModelVoids | None" = None) -> None:
        if settings.method == "model" and model is None:
            raise ValueError("segment.method=model needs a model (segment.model_path)")
        self.settings = settings
        self.global_threshold = threshold if isinstance(threshold, GlobalThreshold) else None
        self.threshold = float(threshold.value if isinstance(threshold, GlobalThreshold) else threshold)
        self.pixel_yx_um = (float(pixel_yx_um[0]), float(pixel_yx_um[1]))
        self.model = model

    def _slice_seed(self, pixels: np.ndarray) -> float:
        """The slice's own Otsu threshold when it separates two real phases, else the stack's.

        A slice's brightness may drift from the stack's (charging, beam current), but a slice
        without particle has only noise to split: its own threshold is trusted only when its
        class means lie at least half as far apart as the stack's.
        """
        g = self.global_threshold
        if g is None or np.ptp(pixels) == 0:
            return self.threshold
        t = float(threshold_otsu(pixels))
        low, high = pixels[pixels <= t], pixels[pixels > t]
        if low.size == 0 or high.size == 0 or float(high.mean()) - float(low.mean()) < 0.5 * g.contrast:
            return self.threshold
        return t

    def void(self, pixels: np.ndarray) -> np.ndarray:
        """Threshold void mask of one slice (methods otsu, fixed, local; the seed of model)."""
        s = self.settings
        t: float | np.ndarray = self.threshold
        if s.method == "local":
            sigma = (s.local_window_um / self.pixel_yx_um[0], s.local_window_um / self.pixel_yx_um[1])
            t = local_threshold(pixels, self._slice_seed(pixels), s.pore_polarity, sigma)
        return void_mask(pixels, t, s.pore_polarity)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Phase codes, uint8 (n, Y, X), of a block of slices (n, Y, X)."""
        s = self.settings
        out = np.empty(block.shape, np.uint8)
        for i, pixels in enumerate(block):
            out[i] = phases_from_void(self.void(pixels), s.envelope_closing_um, self.pixel_yx_um)
        if s.method == "model":
            self.model.refine(block, out)
        return out


def main_section(phases: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """The largest connected particle section of one slice's phase codes (bool mask, bounding box), or None."""
    lab, n = ndi.label(phases > 0)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    own = lab == int(np.argmax(sizes))
    return own, ndi.find_objects(own.astype(np.uint8))[0]


def model_view(pixels: np.ndarray, phases: np.ndarray, pore_polarity: str) -> np.ndarray:
    """One slice as the networks see it: as it is with dark pores; with bright (filled) ones, the fill
    darkened around the grey of the threshold's solid (`fracscope.polarity.fill_darkened`), as in 2-D."""
    if pore_polarity != "bright":
        return pixels
    return fill_darkened(pixels, phases == Phase.SOLID)


def with_stack_polarity(model: "NativeVoids | ModelVoids | None", pore_polarity: str) -> "NativeVoids | ModelVoids | None":
    """The slice model with the stack's decided `pore_polarity` where it was built under "auto"
    (`pores3d.run` builds it before the stack is read); a model built for dark or bright keeps its own."""
    if model is None or getattr(model, "pore_polarity", None) != "auto":
        return model
    decided = copy.copy(model)
    decided.pore_polarity = pore_polarity
    return decided


class NativeVoids:
    """The native-resolution phase model as the pore segmenter, slice by slice (the default model).

    In each slice the largest particle section of the threshold segmentation keeps its
    outline; inside it a pixel is void where the phase model's most likely phase among
    solid, pore and crack is pore or crack (`fracscope.phases.codes_from_probs`). The model
    runs on the whole slice at its own working pixel size, so pores a few source pixels
    across are not shrunk into a crop first.

    Parameters
    ----------
    model : fracscope.phase_map.PhaseMapModel
    pixel_size_um : float
        The slices' in-plane pixel size (µm).
    """

    def __init__(self, model, pixel_size_um: float, pore_polarity: str = "dark") -> None:
        self.model = model
        self.pixel_size_um = float(pixel_size_um)
        self.pore_polarity = pore_polarity

    def refine(self, block: np.ndarray, phases: np.ndarray) -> None:
        """Replace the void of each slice's main section in `phases` (in place) by the model's."""
        for i in range(len(block)):
            found = main_section(phases[i])
            if found is None:
                continue
            own, box = found
            # The whole slice: the model's percentile normalisation expects matrix around the particle.
            codes = self.model.predict_codes(model_view(block[i], phases[i], self.pore_polarity), self.pixel_size_um)
            inside = own[box]
            region = phases[i][box]
            region[inside] = np.where(codes.inside[box][inside] == Phase.SOLID, Phase.SOLID, Phase.PORE)


class ModelVoids:
    """The trained 2-D crop model as the pore segmenter, slice by slice (``segment.model=crops``).

    In each slice the largest particle section of the threshold segmentation is cropped
    exactly as `fracscope.pipeline` crops particles, its phases on the slice's grid come from
    the same step as the pipeline's (`fracscope.phases`, without the rim trim: the outline is
    the threshold's), and inside that section a pixel is void where the model says pore or crack.

    Parameters
    ----------
    backend : fracscope.runtime.Backend
        Or any object with a `ModelMetadata` ``metadata`` (its ``crop_spec`` is applied) and
        ``predict_batched``.
    batch_size : int
    pore_weight : float, optional
        Factor on the pore probability after the paste-back, as in the 2-D pipeline. None: the
        model file's own (``metadata.pore_weight``; 1.0 where it has none).
    """

    def __init__(self, backend, batch_size: int = 16, pore_weight: float | None = None,
                 pore_polarity: str = "dark") -> None:
        self.backend = backend
        self.batch_size = int(batch_size)
        self.pore_weight = resolve_pore_weight(backend.metadata, pore_weight)
        self.pore_polarity = pore_polarity

    def refine(self, block: np.ndarray, phases: np.ndarray) -> None:
        """Replace the void of each slice's main section in `phases` (in place) by the model's."""
        meta = self.backend.metadata
        jobs = []
        for i in range(len(block)):
            found = main_section(phases[i])
            if found is None:
                continue
            own, box = found
            pixels = model_view(block[i], phases[i], self.pore_polarity)
            crop = crop_particle(pixels, own.astype(np.uint32), 1, meta.crop_spec, bbox=box)
            jobs.append((i, own, box, crop))
        if not jobs:
            return
        _, phase_probs = predict_crops(self.backend, [crop for *_, crop in jobs], self.batch_size)
        rule = PhaseRule(self.pore_weight)
        for (i, own, box, crop), prob in zip(jobs, phase_probs):
            r0, c0, r1, c1 = box[0].start, box[1].start, box[0].stop, box[1].stop
            inside = own[r0:r1, c0:c1]
            code = phases_on_image_grid(CropPhases(prob, crop, (r0, c0, r1, c1), inside), rule).phases
            # Both voids, pore and crack, count as pore space.
            region = phases[i, r0:r1, c0:c1]
            region[inside] = np.where(code[inside] == Phase.SOLID, Phase.SOLID, Phase.PORE)
