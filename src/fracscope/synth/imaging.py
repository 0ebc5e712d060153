"""SEM image formation from the ground-truth maps.

Contrast model of an ion-milled cross-section imaged with backscattered/in-lens
electrons: bright oxide particles whose grains differ slightly in grey level
(channelling contrast) with thin darker grain boundaries; dark voids (or bright when
Pt-filled); edge brightening on solid next to voids; a dark spongy carbon-binder matrix
with blurred sub-surface particles; vertical curtaining streaks from milling; blur;
Poisson-Gaussian noise; brightness/contrast/gamma variation; 8- or 16-bit output.
All length scales are in µm and converted with the pixel size, so the look does not
depend on the grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import ndimage as ndi

from fracscope.settings import settings_from_config
from fracscope.types import Phase


@dataclass(frozen=True)
class ImagingParams:
    """Imaging parameters (grey levels are fractions of full scale)."""

    bit_depth: int = 8
    pore_polarity: str = "dark"
    particle_level: float = 0.70
    particle_level_sd: float = 0.02
    grain_contrast_sd: float = 0.02
    boundary_contrast: float = 0.08
    matrix_level: float = 0.085
    matrix_texture: float = 0.8
    subsurface_density_per_um2: float = 0.01
    pore_level: float = 0.08
    filled_pore_level: float = 0.95
    edge_brightening: float = 0.05
    edge_width_um: float = 0.08
    pore_rim_brightening: float = 0.1
    curtain_sd: float = 0.06
    curtain_density_per_um: float = 3.0
    blur_um: float = 0.035
    noise_sd: float = 0.015
    shot_gain: float = 0.0012
    brightness_jitter: float = 0.03
    contrast_jitter: float = 0.06
    gamma_range: tuple[float, float] = (0.9, 1.1)

    @classmethod
    def draw(cls, config: ImagingConfig | Mapping, rng: np.random.Generator) -> ImagingParams:
        """Parameters of one image: the config's, then every scalar named in ``config.randomize``
        (a mapping ``name: [lo, hi]``) drawn uniformly from its range.

        Domain randomisation for training sets: one model must read SEMs of any noise,
        blur and contrast. Without ``randomize`` no random number is drawn, so the
        default renders stay bit-identical.
        """
        config = settings_from_config(ImagingConfig, config, "the synth imaging config")
        base = cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
        ranges = config.randomize
        if not ranges:
            return base
        scalars = sorted(k for k in cls.__dataclass_fields__ if k not in ("bit_depth", "pore_polarity", "gamma_range"))
        drawn = {}
        for name in sorted(ranges):
            if name not in scalars:
                raise ValueError(f"imaging.randomize: {name!r} is not a scalar imaging parameter; use one of {scalars}")
            lo, hi = (float(v) for v in ranges[name])
            if not lo <= hi:
                raise ValueError(f"imaging.randomize.{name}: range [{lo}, {hi}] is empty")
            drawn[name] = float(rng.uniform(lo, hi))
        return replace(base, **drawn)


@dataclass(frozen=True)
class ImagingConfig(ImagingParams):
    """The generator's `imaging` config: fixed parameters and the ranges drawn per image.

    randomize : {name: (lo, hi)} of scalar `ImagingParams` fields, drawn per image by
        `ImagingParams.draw`; empty keeps the fixed look.
    """

    randomize: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def smooth_noise(
    shape: tuple[int, int], sigma_px: float, rng: np.random.Generator, pad: int = 2, min_sigma_px: float = 0.0
) -> np.ndarray:
    """Unit-variance Gaussian-filtered noise of `shape`, correlation length `sigma_px` pixels.

    Large sigmas are filtered on a grid `sigma_px // 3` times coarser (plus `pad` cells) and
    zoomed up: the same look, far cheaper. `min_sigma_px` floors the coarse-grid sigma.
    The 2-D generator and the 3-D phantom (`fracscope.pores3d.synth`) call it with their own
    `pad` and floor, which fix their images for a given seed.
    """
    step = max(1, int(sigma_px // 3))
    small = (shape[0] // step + pad, shape[1] // step + pad)
    n = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), max(sigma_px / step, min_sigma_px))
    if step > 1:
        n = ndi.zoom(n, step, order=1)
    n = n[: shape[0], : shape[1]]
    return n / max(float(n.std()), 1e-6)


def _matrix(shape, px_um: float, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # Carbon-binder domain: a grey sponge of bright carbon-black specks around black
    # voids, broken by open black pore space where no binder is left in the section.
    fine = smooth_noise(shape, max(0.04 / px_um, 0.6), rng)
    mid = smooth_noise(shape, max(0.12 / px_um, 0.8), rng)
    coarse = smooth_noise(shape, 0.6 / px_um, rng)
    sponge = 0.7 * fine + mid
    # Binder present (1) or open pore space (0): the real matrix is bimodal, not flat grey.
    binder = 1.0 / (1.0 + np.exp(-3.0 * (coarse + 1.2)))
    solid = np.clip(sponge + 1.0, 0.0, None) ** 1.1  # black voids where the sponge is thin
    # Scaled so the median stays near matrix_level while specks reach ~3x it (as in 3_phase.tif).
    m = p.matrix_level * (1.0 - p.matrix_texture + p.matrix_texture * 1.4 * binder * solid)
    # Particles just below the surface: dim, blurred, irregular.
    sub_field = smooth_noise(shape, 0.6 / px_um, rng)
    thr = 2.6 - 4.0 * p.subsurface_density_per_um2
    sub = ndi.gaussian_filter((sub_field > thr).astype(np.float32), 0.15 / px_um)
    return np.maximum(m, sub * (0.35 + 0.25 * np.clip(sponge, 0, 1)) * p.matrix_level / 0.085)


def _curtains(shape, px_um: float, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    n = rng.poisson(p.curtain_density_per_um * w * px_um)
    cols = np.zeros(w, np.float32)
    if n:
        np.add.at(cols, rng.integers(0, w, n), rng.normal(0, p.curtain_sd, n).astype(np.float32))
    cols = ndi.gaussian_filter1d(cols, max(0.02 / px_um, 0.5)) * 2.0
    cols += 0.3 * p.curtain_sd * smooth_noise((1, w), 1.0 / px_um, rng)[0]
    # Streaks fade in and out along the milling direction.
    env = 0.4 + 0.6 * np.clip(0.5 + 0.5 * smooth_noise((h, w // 8 + 1), 3.0 / px_um, rng), 0, 1)
    env = np.repeat(env, 8, axis=1)[:, :w]
    return cols[None, :] * env


def render_image(
    phases: np.ndarray,
    instances: np.ndarray,
    grains: np.ndarray,
    boundary: np.ndarray,
    pixel_size_um: float,
    params: ImagingParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """SEM pixels (uint8 or uint16) for the given ground truth.

    Parameters
    ----------
    phases : uint8 phase codes; instances : uint32 ids; grains : int grain id per pixel
    (-1 outside particles, unique over the image); boundary : grain-boundary pixels.
    """
    shape = phases.shape
    px = float(pixel_size_um)
    img = _matrix(shape, px, params, rng)
    solid = phases == Phase.SOLID
    n_inst = int(instances.max()) + 1
    inst_level = (params.particle_level + params.particle_level_sd * rng.standard_normal(n_inst)).astype(np.float32)
    n_gr = int(grains.max()) + 2
    grain_off = (params.grain_contrast_sd * rng.standard_normal(n_gr)).astype(np.float32)
    part = instances > 0
    level = inst_level[instances] + grain_off[grains + 1]
    # Grain boundaries are visible only in places (faint, broken lines in real images).
    vis = np.clip(0.2 + 0.6 * smooth_noise(shape, 0.4 / px, rng), 0.0, 1.0)
    level = level - params.boundary_contrast * boundary * vis
    img = np.where(part, level, img)
    void = part & ~solid
    void_level = params.filled_pore_level if params.pore_polarity == "bright" else params.pore_level
    img = np.where(void, void_level * (0.8 + 0.4 * rng.random(shape, dtype=np.float32)), img)
    # Edge brightening: electrons escape from solid next to voids and particle edges.
    d = ndi.distance_transform_edt(solid)
    halo = np.exp(-(d - 1.0) / max(params.edge_width_um / px, 0.5))
    img = img + params.edge_brightening * halo * solid
    # Large voids get a distinct bright rim (edge effect + redeposition); small ones do not.
    big = ndi.binary_opening(void, iterations=max(1, int(round(0.1 / px))))
    if params.pore_rim_brightening and big.any():
        d_big = ndi.distance_transform_edt(~big)
        img = img + params.pore_rim_brightening * np.exp(-d_big / max(params.edge_width_um / px, 0.7)) * solid
    img = img * (1.0 + _curtains(shape, px, params, rng) * (0.4 + 0.6 * part))
    img = ndi.gaussian_filter(img.astype(np.float32), max(params.blur_um / px, 0.3))
    contrast = 1.0 + params.contrast_jitter * rng.standard_normal()
    bright = params.brightness_jitter * rng.standard_normal()
    gamma = rng.uniform(*params.gamma_range)
    img = np.clip((img - 0.45) * contrast + 0.45 + bright, 0.0, 1.0) ** gamma
    sd = np.sqrt(params.shot_gain * img + params.noise_sd**2)
    img = np.clip(img + sd * rng.standard_normal(shape, dtype=np.float32), 0.0, 1.0)
    if int(params.bit_depth) == 16:
        return np.round(img * 65535).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)
