"""Training-time augmentation of particle crops, applied jointly to image and masks.

Geometry (flips, 90° and free rotation, scale jitter) moves image, own mask and phase
map together; intensity changes (brightness, contrast, gamma, noise, blur, curtaining
streaks) touch the image only. Two SEM-specific pieces run outside albumentations
because they need the phase map: `invert_pores` (Pt-filled, bright pores) and
`perturb_mask` (the detector's mask at inference is never exact). No colour transforms:
the images are grey.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from fracscope.types import Phase  # noqa: E402

IGNORE_PHASE = 255


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation switches and strengths (probabilities per sample).

    invert_pores_p > 0 means the model is trained on bright (Pt-filled) pores too;
    the checkpoint then records ``pore_polarities: [dark, bright]``.
    """

    enabled: bool = True
    rotate_p: float = 0.5
    scale_jitter: float = 0.12
    brightness_contrast_p: float = 0.5
    gamma_p: float = 0.3
    noise_p: float = 0.4
    blur_p: float = 0.25
    curtain_p: float = 0.3
    invert_pores_p: float = 0.2
    invert_cracks_p: float = 0.5
    mask_perturb_p: float = 0.7
    mask_perturb_px: int = 3

    @property
    def pore_polarities(self) -> list[str]:
        return ["dark", "bright"] if self.enabled and self.invert_pores_p > 0 else ["dark"]


class CurtainStreaks(A.ImageOnlyTransform):
    """Vertical streaks from ion-milling curtaining: column offsets fading down the image.

    Parameters
    ----------
    amplitude : (float, float)
        Range of the streak standard deviation, in normalised intensity.
    width_px : (float, float)
        Range of the streak width (Gaussian smoothing across columns).
    """

    def __init__(self, amplitude=(0.02, 0.08), width_px=(0.7, 2.5), p: float = 0.3) -> None:
        super().__init__(p=p)
        self.amplitude = tuple(amplitude)
        self.width_px = tuple(width_px)

    def get_params_dependent_on_data(self, params, data) -> dict:
        h, w = params["shape"][:2]
        rng = self.random_generator
        amp = rng.uniform(*self.amplitude)
        prof = ndi.gaussian_filter1d(rng.normal(0.0, 1.0, w), rng.uniform(*self.width_px))
        prof *= amp / max(float(prof.std()), 1e-6)
        # Curtaining starts at the milled edge (top) and fades with depth.
        fade = np.exp(-np.arange(h) / (h * rng.uniform(0.5, 3.0)))
        return {"streaks": (fade[:, None] * prof[None, :]).astype(np.float32)}

    def apply(self, img: np.ndarray, streaks: np.ndarray | None = None, **params) -> np.ndarray:
        return np.clip(img + streaks.reshape(img.shape), 0.0, 1.0).astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("amplitude", "width_px")


def build_transform(spec: AugmentSpec, seed: int | None = None) -> A.Compose:
    """The albumentations pipeline for float32 [0, 1] crops with masks [own, phases+1].

    Phases travel shifted by +1 so that pixels rotated in from outside (filled with
    0) come back as 255, i.e. ignored, instead of as fake background.
    """
    s = spec.scale_jitter
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(
                scale=(1 - s, 1 + s),
                rotate=(-180, 180),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_REFLECT_101,
                fill=0,
                fill_mask=0,
                p=spec.rotate_p,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.25, p=spec.brightness_contrast_p),
            A.RandomGamma(gamma_limit=(75, 135), p=spec.gamma_p),
            CurtainStreaks(p=spec.curtain_p),
            A.GaussNoise(std_range=(0.01, 0.07), p=spec.noise_p),
            A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.3, 1.1), p=spec.blur_p),
        ],
        seed=seed,
    )


def invert_pores(image: np.ndarray, phases: np.ndarray, rng: np.random.Generator, include_cracks: bool) -> np.ndarray:
    """Make pores (and optionally cracks) bright, as Pt-filled pores look.

    The change is a smoothed additive field so that the blur around each pore edge
    flips too (no dark rims left around bright pores).
    """
    voids = phases == Phase.PORE
    if include_cracks:
        voids |= phases == Phase.CRACK
    solid = phases == Phase.SOLID
    if not voids.any() or not solid.any():
        return image
    solid_level = float(np.median(image[solid]))
    target = min(1.0, solid_level + rng.uniform(0.12, 0.3))
    delta = np.where(voids, target - image, 0.0).astype(np.float32)
    delta = cv2.GaussianBlur(delta, (0, 0), 0.6) * (1.0 / max(cv2.GaussianBlur(voids.astype(np.float32), (0, 0), 0.6).max(), 1e-6))
    delta = np.where(voids, target - image, delta)
    return np.clip(image + delta, 0.0, 1.0).astype(np.float32)


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, max_px: int) -> np.ndarray:
    """Erode, dilate, close or open the mask by 1..max_px pixels (as a detector might err)."""
    if max_px < 1:
        return mask
    r = int(rng.integers(1, max_px + 1))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    op = rng.integers(4)
    m = mask.astype(np.uint8)
    if op == 0:
        out = cv2.erode(m, kernel)
    elif op == 1:
        out = cv2.dilate(m, kernel)
    elif op == 2:
        out = cv2.morphologyEx(m, cv2.MORPH_CLOSE, kernel)
    else:
        out = cv2.morphologyEx(m, cv2.MORPH_OPEN, kernel)
    return out if out.any() else m


@dataclass
class CropAugmenter:
    """Augment one (image, mask, phases) crop; returns the net input and the targets.

    Returns from `__call__`: (image float32, input_mask uint8, true_mask uint8, phases uint8
    with 255 = unknown).
    """

    spec: AugmentSpec
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.transform = build_transform(self.spec, seed=self.seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray, phases: np.ndarray):
        spec = self.spec
        image = image.astype(np.float32, copy=False)
        known = phases != IGNORE_PHASE
        if known.any() and self.rng.random() < spec.invert_pores_p:
            image = invert_pores(image, phases, self.rng, include_cracks=self.rng.random() < spec.invert_cracks_p)
        shifted = np.where(known, phases + 1, 0).astype(np.uint8)
        out = self.transform(image=image, masks=[mask.astype(np.uint8), shifted])
        image = out["image"].astype(np.float32, copy=False)
        true_mask, shifted = out["masks"]
        phases = np.where(shifted == 0, IGNORE_PHASE, shifted.astype(np.int16) - 1).astype(np.uint8)
        in_mask = true_mask
        if self.rng.random() < spec.mask_perturb_p:
            in_mask = perturb_mask(true_mask, self.rng, spec.mask_perturb_px)
        return image, in_mask, true_mask, phases
