"""SEM image formation from the ground-truth maps.

Contrast model of an ion-milled cross-section imaged with backscattered/in-lens
electrons: bright oxide particles whose grains differ slightly in grey level
(channelling contrast) with thin darker grain boundaries; dark voids (or bright when
Pt-filled); edge brightening on solid next to voids; a dark spongy carbon-binder matrix
with blurred sub-surface particles; vertical curtaining streaks from milling; blur;
Poisson-Gaussian noise; brightness/contrast/gamma variation; 8- or 16-bit output.
All length scales are in µm and converted with the pixel size, so the look does not
depend on the grid.

Optional looks (`LOOKS`, on per image via `imaging.looks` or drawn via `imaging.looks_p`)
cover other preparations and detectors: an infiltrated pore space (Pt or resin in BSE:
bright fill between particles and in their open pores and cracks, carbon binder as dark
patches, some voids left unfilled), SE-like edge contrast with topographic shading,
charging streaks along the scan lines, directional smearing, and uneven illumination (`shading`: the
signal times a gain that drifts across the field, linearly in a drawn direction or as a vignette). The SEM data bar
(`data_bar`) is appended by the generator (`fracscope.synth.databar`). With no look on,
no extra random number is drawn: the plain renders stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtri

from fracscope.settings import settings_from_config
from fracscope.types import Phase

LOOKS: tuple[str, ...] = ("infiltrated", "se_edges", "charging", "smear", "data_bar", "shading")


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
    looks: tuple[str, ...] = ()
    fill_level: float = 0.97
    fill_texture: float = 0.04
    infiltrated_particle_scale: float = 0.7
    binder_fraction: float = 0.3
    binder_patch_um: float = 0.8
    unfilled_fraction: float = 0.08
    unfilled_pore_p: float = 0.2
    closed_pore_fill_p: float = 0.3
    se_edge_strength: float = 0.35
    se_edge_width_um: float = 0.12
    se_shading: float = 0.25
    charging_strength: float = 0.25
    charging_length_um: float = 1.5
    charging_row_fraction: float = 0.08
    smear_um: float = 0.15
    shading_strength: float = 0.2

    @classmethod
    def draw(cls, config: ImagingConfig | Mapping, rng: np.random.Generator) -> ImagingParams:
        """Parameters of one image: the config's, then every scalar named in ``config.randomize``
        (a mapping ``name: [lo, hi]``) drawn uniformly from its range, then each look of
        ``config.looks_p`` switched on with its probability (on top of ``config.looks``).

        Domain randomisation for training sets: one model must read SEMs of any noise,
        blur, contrast and preparation. Without ``randomize`` and with every ``looks_p``
        0 (or 1) no random number is drawn, so the default renders stay bit-identical.
        """
        config = settings_from_config(ImagingConfig, config, "the synth imaging config")
        base = cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
        for name in (*base.looks, *config.looks_p):
            if name not in LOOKS:
                raise ValueError(f"imaging.looks: unknown look {name!r}; use one of {list(LOOKS)}")
        looks = set(base.looks)
        ranges = config.randomize
        scalars = sorted(k for k in cls.__dataclass_fields__ if k not in ("bit_depth", "pore_polarity", "gamma_range", "looks"))
        drawn = {}
        for name in sorted(ranges):
            if name not in scalars:
                raise ValueError(f"imaging.randomize: {name!r} is not a scalar imaging parameter; use one of {scalars}")
            lo, hi = (float(v) for v in ranges[name])
            if not lo <= hi:
                raise ValueError(f"imaging.randomize.{name}: range [{lo}, {hi}] is empty")
            drawn[name] = float(rng.uniform(lo, hi))
        for name in sorted(config.looks_p):
            p = float(config.looks_p[name])
            # No draw for 0 or 1: a look that is always off or on keeps the random stream.
            if p >= 1.0 or (p > 0.0 and rng.random() < p):
                looks.add(name)
        if not drawn and looks == set(base.looks):
            return base
        return replace(base, looks=tuple(n for n in LOOKS if n in looks), **drawn)


# Parameters that only the optional looks read (from fill_level on).
LOOK_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(ImagingParams)[[f.name for f in fields(ImagingParams)].index("fill_level") :]
)


@dataclass(frozen=True)
class ImagingConfig(ImagingParams):
    """The generator's `imaging` config: fixed parameters and the ranges drawn per image.

    randomize : {name: (lo, hi)} of scalar `ImagingParams` fields, drawn per image by
        `ImagingParams.draw`; empty keeps the fixed look.
    looks_p : {look: probability} of each of `LOOKS`, switched on per image by
        `ImagingParams.draw`; all 0 keeps the plain look.
    """

    randomize: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    looks_p: Mapping[str, float] = field(default_factory=dict)


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


def _above_share(noise: np.ndarray, share: float) -> np.ndarray:
    """Where unit-variance Gaussian `noise` exceeds the level that leaves `share` of it above."""
    return noise > ndtri(1.0 - float(np.clip(share, 1e-4, 1 - 1e-4)))


def _fill(shape, px_um: float, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # Infiltrated Pt/resin: near-saturated, with a faint mottle (grain of the deposit).
    return p.fill_level * (1.0 - p.fill_texture * np.abs(smooth_noise(shape, max(0.05 / px_um, 0.6), rng)))


def _infiltrated_matrix(shape, px_um: float, p: ImagingParams, fill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Pore space between particles filled bright; the carbon-binder domain stays as dark
    # patches (its own sponge texture), and a share of voids was never reached by the fill.
    binder_tex = _matrix(shape, px_um, p, rng)
    patches = smooth_noise(shape, max(0.5 * p.binder_patch_um / px_um, 0.8), rng)
    binder = _above_share(patches, p.binder_fraction)
    holes = smooth_noise(shape, max(0.15 / px_um, 0.8), rng)
    unfilled = _above_share(holes, p.unfilled_fraction) & ~binder
    img = np.where(binder, binder_tex, fill)
    return np.where(unfilled, p.pore_level * (0.8 + 0.4 * rng.random(shape, dtype=np.float32)), img)


def _unfilled_voids(void: np.ndarray, part: np.ndarray, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # The fill reaches a pore or crack only through open porosity: each void of the section is
    # filled or left empty as a whole, those open to the particle outline mostly filled, closed
    # ones mostly empty (some are open out of the section plane).
    lab, n = ndi.label(void, structure=np.ones((3, 3)))
    open_ids = np.unique(lab[ndi.binary_dilation(~part) & void])
    is_open = np.zeros(n + 1, bool)
    is_open[open_ids] = True
    p_empty = np.where(is_open, p.unfilled_pore_p, 1.0 - p.closed_pore_fill_p)
    empty = rng.random(n + 1) < p_empty
    empty[0] = False
    return empty[lab]


def _se_edges(img: np.ndarray, solid: np.ndarray, d_solid: np.ndarray, px_um: float, p: ImagingParams,
              rng: np.random.Generator) -> np.ndarray:
    # Secondary electrons escape where the beam meets an edge: a strong bright band inside
    # particle outlines and pore rims; the polished solid stands proud of voids and matrix,
    # and the detector on one side lights the relief from that side.
    edge = np.exp(-(d_solid - 1.0) / max(p.se_edge_width_um / px_um, 0.6)) * solid
    sigma = max(0.3 / px_um, 1.0)
    height = ndi.gaussian_filter(solid.astype(np.float32), sigma)
    gy, gx = np.gradient(height)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    # The gradient of a blurred step peaks at 1 / (sqrt(2 pi) sigma): scaled to about +-1.
    shade = (gy * np.sin(angle) + gx * np.cos(angle)) * (2.5 * sigma)
    return img + p.se_edge_strength * edge + p.se_shading * shade


def _smear(img: np.ndarray, px_um: float, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # Drift or vibration during the scan: a line blur along one drawn direction.
    length = max(p.smear_um / px_um, 1.0)
    angle = rng.uniform(0.0, np.pi)
    half = int(np.ceil(length / 2))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
    t = np.linspace(-length / 2, length / 2, max(int(4 * length), 2))
    rows = np.round(half + t * np.sin(angle)).astype(int)
    cols = np.round(half + t * np.cos(angle)).astype(int)
    np.add.at(kernel, (rows, cols), 1.0)
    import cv2  # FFT-based for long kernels (high magnification)

    return cv2.filter2D(img.astype(np.float32), -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _charging(img: np.ndarray, px_um: float, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # Charge builds up while the beam scans (left to right) over bright, high-yield regions and
    # leaks away along the line: faint bright tails after bright regions on every line, strong
    # bright or dark streaks on some lines, and whole lines jumping when the charge discharges.
    from scipy.signal import lfilter

    h = img.shape[0]
    a = float(np.exp(-1.0 / max(p.charging_length_um / px_um, 1.0)))
    source = np.clip(img - float(img.mean()), 0.0, None)
    trail = lfilter([1.0 - a], [1.0, -a], source, axis=1).astype(np.float32)
    hit = rng.random(h) < p.charging_row_fraction
    row = hit * rng.choice([-1.0, 1.0], h) * rng.uniform(0.4, 1.0, h)
    row = ndi.gaussian_filter1d(row, max(0.01 / px_um, 0.5)).astype(np.float32)[:, None]
    return img + p.charging_strength * (trail * (0.5 + 3.0 * row) + 0.3 * row)


def _shading(img: np.ndarray, p: ImagingParams, rng: np.random.Generator) -> np.ndarray:
    # Uneven illumination (detector yield over a low-magnification field, a CT slice's fall-off): the
    # signal times a gain of 1 +- shading_strength, linear in a drawn direction or a vignette (1 at the
    # centre, 1 - strength at the middle of each edge), drawn with equal probability.
    h, w = img.shape
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    if rng.random() < 0.5:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        gain = 1.0 + p.shading_strength * (np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y)
    else:
        gain = 1.0 - p.shading_strength * (x * x + y * y) / 2.0
    return img * gain


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
    infiltrated = "infiltrated" in params.looks
    if infiltrated:
        fill = _fill(shape, px, params, rng)
        img = _infiltrated_matrix(shape, px, params, fill, rng)
    else:
        img = _matrix(shape, px, params, rng)
    solid = phases == Phase.SOLID
    n_inst = int(instances.max()) + 1
    inst_level = (params.particle_level + params.particle_level_sd * rng.standard_normal(n_inst)).astype(np.float32)
    n_gr = int(grains.max()) + 2
    grain_off = (params.grain_contrast_sd * rng.standard_normal(n_gr)).astype(np.float32)
    part = instances > 0
    level = inst_level[instances] + grain_off[grains + 1]
    if infiltrated:
        # The operator sets contrast for the heavy fill: the oxide reads mid-grey below it.
        level = level * params.infiltrated_particle_scale
    # Grain boundaries are visible only in places (faint, broken lines in real images).
    vis = np.clip(0.2 + 0.6 * smooth_noise(shape, 0.4 / px, rng), 0.0, 1.0)
    level = level - params.boundary_contrast * boundary * vis
    img = np.where(part, level, img)
    void = part & ~solid
    void_level = params.filled_pore_level if params.pore_polarity == "bright" else params.pore_level
    img = np.where(void, void_level * (0.8 + 0.4 * rng.random(shape, dtype=np.float32)), img)
    if infiltrated:
        img = np.where(void & ~_unfilled_voids(void, part, params, rng), fill, img)
    # Edge brightening: electrons escape from solid next to voids and particle edges.
    d = ndi.distance_transform_edt(solid)
    halo = np.exp(-(d - 1.0) / max(params.edge_width_um / px, 0.5))
    img = img + params.edge_brightening * halo * solid
    # Large voids get a distinct bright rim (edge effect + redeposition); small ones do not.
    big = ndi.binary_opening(void, iterations=max(1, int(round(0.1 / px))))
    if params.pore_rim_brightening and big.any():
        d_big = ndi.distance_transform_edt(~big)
        img = img + params.pore_rim_brightening * np.exp(-d_big / max(params.edge_width_um / px, 0.7)) * solid
    if "se_edges" in params.looks:
        img = _se_edges(img, solid, d, px, params, rng)
    img = img * (1.0 + _curtains(shape, px, params, rng) * (0.4 + 0.6 * part))
    img = ndi.gaussian_filter(img.astype(np.float32), max(params.blur_um / px, 0.3))
    if "smear" in params.looks:
        img = _smear(img, px, params, rng)
    if "charging" in params.looks:
        img = _charging(img, px, params, rng)
    if "shading" in params.looks:
        img = _shading(img, params, rng)
    contrast = 1.0 + params.contrast_jitter * rng.standard_normal()
    bright = params.brightness_jitter * rng.standard_normal()
    gamma = rng.uniform(*params.gamma_range)
    img = np.clip((img - 0.45) * contrast + 0.45 + bright, 0.0, 1.0) ** gamma
    sd = np.sqrt(params.shot_gain * img + params.noise_sd**2)
    img = np.clip(img + sd * rng.standard_normal(shape, dtype=np.float32), 0.0, 1.0)
    if int(params.bit_depth) == 16:
        return np.round(img * 65535).astype(np.uint16)
    return np.round(img * 255).astype(np.uint8)
