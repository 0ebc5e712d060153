"""Single-particle crops and electrode wide fields with exact ground truth."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from fracscope.measure import measure_particle
from fracscope.synth.config import SynthConfig
from fracscope.synth.damage import CrackStyle, canonical_class, make_cracks
from fracscope.synth.geometry import ParticleSpec, build_geometry, canvas_half_px
from fracscope.synth.databar import draw_data_bar
from fracscope.synth.imaging import ImagingParams, render_image
from fracscope.synth.pores import PoreModel, stamp_pores
from fracscope.types import CLASS_NAMES, AnnotatedImage, ParticleAnnotation, Phase, SEMImage

SYNTH_VERSION = "0.2.0"
MAX_CANVAS_PX = 6000  # one particle's square canvas, a side (see render_particle)


@dataclass
class LocalParticle:
    """One rendered particle on its own square canvas (centre = sphere axis)."""

    spec: ParticleSpec
    mask: np.ndarray
    phases: np.ndarray
    grains: np.ndarray
    boundary: np.ndarray
    class_name: str


def _range(rng: np.random.Generator, lo_hi) -> float:
    lo, hi = (float(v) for v in lo_hi)
    return lo if hi <= lo else float(rng.uniform(lo, hi))


def _sphere_diameter(cfg, rng: np.random.Generator) -> float:
    p = cfg.particle
    lo, hi = (float(v) for v in p.d_range_um)
    for _ in range(100):
        d = float(p.d50_um) * math.exp(float(p.d_log_sd) * rng.standard_normal())
        if lo <= d <= hi:
            return d
    return float(np.clip(d, lo, hi))


def _draw_class(cfg, rng: np.random.Generator) -> str:
    w = np.asarray(list(cfg.damage), dtype=float)
    return CLASS_NAMES[int(rng.choice(3, p=w / w.sum()))]


def _spec(cfg, rng, diameter_um: float, offset_um: float) -> ParticleSpec:
    return ParticleSpec(
        sphere_diameter_um=diameter_um,
        offset_um=offset_um,
        grain_width_um=_range(rng, cfg.particle.grain_width_um),
        grain_aspect=_range(rng, cfg.particle.grain_aspect),
        class_name=_draw_class(cfg, rng),
    )


def render_particle(cfg: SynthConfig, spec: ParticleSpec, pixel_size_um: float, rng: np.random.Generator) -> LocalParticle:
    """Geometry, cracks (class enforced) and calibrated pores of one particle.

    Raises ValueError when the particle's canvas would exceed `MAX_CANVAS_PX` a side: each
    particle is drawn whole (~150 bytes a canvas pixel at peak), so a 15 µm particle at
    0.005 µm/px (~4100 px) takes ~2.5 GB and the cap (~5 GB) stops a typo such as nm for µm.
    """
    half = canvas_half_px(spec, pixel_size_um)
    if 2 * half + 1 > MAX_CANVAS_PX:
        raise ValueError(
            f"a {spec.sphere_diameter_um:.1f} um particle at {pixel_size_um} um/px needs a {2 * half + 1} px canvas "
            f"(limit {MAX_CANVAS_PX}): use a pixel size of at least ~0.004 um/px"
        )
    geom = build_geometry(spec, pixel_size_um, half, float(cfg.particle.outline_roughness), rng)
    style = CrackStyle(
        width_um=tuple(cfg.particle.crack_width_um),
        branches=tuple(int(b) for b in cfg.particle.crack_branches),
        min_width_px=float(cfg.particle.crack_min_width_px),
        short_fraction=float(cfg.particle.short_crack_fraction),
        short_length_um=tuple(cfg.particle.short_crack_length_um),
        short_width_um=tuple(cfg.particle.short_crack_width_um),
    )
    crack, cls = make_cracks(geom, spec.class_name, style, pixel_size_um, rng)
    por = cfg.preset.porosity
    model = PoreModel(float(por.center_pct), float(por.edge_pct), tuple(por.diameter_um), float(por.core_size_boost))
    offset_frac = abs(spec.offset_um) / (0.5 * spec.sphere_diameter_um)
    pore = stamp_pores(geom.mask, geom.grains, geom.boundary, crack, offset_frac, model, pixel_size_um, rng)
    phases = np.zeros(geom.mask.shape, np.uint8)
    phases[geom.mask] = Phase.SOLID
    phases[pore] = Phase.PORE
    phases[crack] = Phase.CRACK
    return LocalParticle(spec, geom.mask, phases, geom.grains, geom.boundary & (phases == Phase.SOLID), cls)


def _annotate(pid: int, cls: str, mask, phases, px: float, spec: ParticleSpec, touches: bool) -> ParticleAnnotation:
    m = measure_particle(mask, phases, px)
    m["sphere_diameter_um"] = float(spec.sphere_diameter_um)
    m["section_offset_um"] = float(spec.offset_um)
    m["touches_border"] = float(touches)
    return ParticleAnnotation(particle_id=pid, class_name=cls, measurements=m)


def _meta(cfg, seed: int, kind: str, index: int, params: ImagingParams) -> dict:
    meta = {
        "synth_version": SYNTH_VERSION,
        "preset": str(cfg.preset.name),
        "seed": int(seed),
        "index": int(index),
        "kind": kind,
        "pore_polarity": str(cfg.imaging.pore_polarity),
    }
    randomized = sorted(cfg.imaging.randomize)
    if randomized:
        meta["imaging"] = {k: round(float(getattr(params, k)), 6) for k in randomized}
    if cfg.imaging.looks or any(float(p) > 0 for p in cfg.imaging.looks_p.values()):
        meta["looks"] = list(params.looks)
    return meta


def _render(phases, instances, grains, boundary, px: float, params: ImagingParams, rng):
    """Pixels, instances and phases; with the `data_bar` look the image gains a data bar
    below it, and the truth maps the same rows as background (nothing to detect there)."""
    pixels = render_image(phases, instances, grains, boundary, px, params, rng)
    if "data_bar" not in params.looks:
        return pixels, instances, phases
    strip = draw_data_bar(pixels.shape[1], px, rng).pixels
    if pixels.dtype == np.uint16:
        strip = strip.astype(np.uint16) * 257
    rows = ((0, strip.shape[0]), (0, 0))
    return np.vstack([pixels, strip.astype(pixels.dtype)]), np.pad(instances, rows), np.pad(phases, rows)


def make_crop(cfg: SynthConfig, seed: int, index: int) -> AnnotatedImage:
    """Crop `index` of the crops set with this seed (independent of the other crops)."""
    rng = np.random.default_rng([int(seed), 0, int(index)])
    px = _range(rng, cfg.crops.pixel_size_um)
    d = _sphere_diameter(cfg, rng)
    off = float(cfg.crops.max_offset_frac) * 0.5 * d * rng.uniform(-1.0, 1.0)
    spec = _spec(cfg, rng, d, off)
    lp = render_particle(cfg, spec, px, rng)
    pad = int(math.ceil(lp.mask.shape[0] * float(cfg.crops.margin_frac) / max(1e-6, 1 - 2 * float(cfg.crops.margin_frac))))
    # Trim the canvas to the particle first, then add the matrix margin, keeping it centred.
    rows, cols = np.nonzero(lp.mask)
    c = lp.mask.shape[0] // 2
    half = int(max(np.abs(rows - c).max(), np.abs(cols - c).max())) + 2
    sl = (slice(c - half, c + half + 1),) * 2
    mask = np.pad(lp.mask[sl], pad)
    phases = np.pad(lp.phases[sl], pad)
    grains = np.pad(lp.grains[sl], pad, constant_values=-1)
    boundary = np.pad(lp.boundary[sl], pad)
    instances = mask.astype(np.uint32)
    ann = _annotate(1, lp.class_name, mask, phases, px, spec, False)
    params = ImagingParams.draw(cfg.imaging, rng)
    pixels, instances, phases = _render(phases, instances, grains, boundary, px, params, rng)
    preset = str(cfg.preset.name)
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source="synthetic", source="fracscope.synth"),
        stem=f"synth_{preset}_crop_s{seed}_{index:05d}",
        instances=instances,
        phases=phases,
        particles=[ann],
        meta=_meta(cfg, seed, "crops", index, params),
    )


def generate_crops(cfg: SynthConfig, n: int, seed: int) -> Iterator[AnnotatedImage]:
    """Yield `n` single-particle crops (one centred particle per image).

    Image i depends only on (seed, i), so a prefix of a longer run is identical.
    """
    for i in range(int(n)):
        yield make_crop(cfg, seed, i)


def _pack(cfg, shape_um: tuple[float, float], rng: np.random.Generator) -> list[tuple[float, float, ParticleSpec]]:
    """Random sequential packing of sphere sections (largest first) into the field."""
    e = cfg.electrode
    h, w = shape_um
    target = float(e.area_fraction) * h * w
    big: list[ParticleSpec] = []
    total = 0.0
    while total < 2.5 * target:
        d = _sphere_diameter(cfg, rng)
        spec = _spec(cfg, rng, d, rng.uniform(-0.5, 0.5) * d)  # cut at a random height
        if spec.section_radius_um >= 0.4:
            big.append(spec)
            total += math.pi * spec.section_radius_um**2
    big.sort(key=lambda s: -s.section_radius_um)
    ys, xs, rs = np.empty(0), np.empty(0), np.empty(0)
    placed: list[tuple[float, float, ParticleSpec]] = []
    # Calendered electrodes: sections may overlap by this share of their radii (flattened in make_field).
    min_gap = 0.97 - float(e.contact_overlap)

    def place(spec: ParticleSpec, tries: int) -> bool:
        nonlocal ys, xs, rs
        r = spec.section_radius_um
        for _ in range(tries):
            y = rng.uniform(-0.6 * r, h + 0.6 * r)
            x = rng.uniform(-0.6 * r, w + 0.6 * r)
            if np.all(np.hypot(ys - y, xs - x) >= min_gap * (rs + r)):
                ys, xs, rs = np.append(ys, y), np.append(xs, x), np.append(rs, r)
                placed.append((y, x, spec))
                return True
        return False

    covered = 0.0
    for spec in big:
        if place(spec, 25):
            r = spec.section_radius_um
            y, x = ys[-1], xs[-1]
            # Only the part inside the field counts towards the area fraction.
            fy = max(min(y + r, h) - max(y - r, 0), 0) / (2 * r)
            fx = max(min(x + r, w) - max(x - r, 0), 0) / (2 * r)
            covered += math.pi * r * r * fy * fx
        if covered >= target:
            break
    # Small satellite particles fill the gaps between the large ones.
    frac = float(e.fines_fraction)
    n_fines = int(round(len(placed) * frac / max(1e-6, 1.0 - frac)))
    for _ in range(n_fines):
        d = _range(rng, e.fines_d_range_um)
        spec = _spec(cfg, rng, d, rng.uniform(-0.3, 0.3) * d)
        place(spec, 40)
    return placed


def _pack_window(cfg, field_um: tuple[float, float], rng: np.random.Generator) -> list[tuple[float, float, ParticleSpec]]:
    """`_pack` over at least `electrode.packed_field_um` a side, positions shifted so that the field
    is the central window of the packed area (the field itself at 0 or when it is larger).

    A field packed alone meets its area fraction deeper down `_pack`'s largest-first pool the
    more of it hangs over the border, so small fields get smaller sections; a window of a larger
    packing sees the sections of the larger field, as a zoomed-in microscope sees an electrode's.
    """
    side_um = float(cfg.electrode.packed_field_um)
    h, w = field_um
    packed_h, packed_w = max(h, side_um), max(w, side_um)
    placed = _pack(cfg, (packed_h, packed_w), rng)
    if (packed_h, packed_w) == (h, w):
        return placed
    oy, ox = 0.5 * (packed_h - h), 0.5 * (packed_w - w)
    return [(y - oy, x - ox, spec) for y, x, spec in placed]


def _lost_to_neighbours(k: int, discs: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of the window where another particle's section disc has a lower power distance
    (|p - c|² - r²) than particle k's: overlapping discs then meet on their radical line, the flat
    contact face of two particles pressed together in calendering."""
    y0, y1, x0, x1 = window
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cy, cx, r = discs[k]
    own = (yy - cy) ** 2 + (xx - cx) ** 2 - r * r
    lost = np.zeros(yy.shape, bool)
    for j, (jy, jx, jr) in enumerate(discs):
        if j == k or jy + jr < y0 or jy - jr > y1 or jx + jr < x0 or jx - jr > x1:
            continue
        d2 = (yy - jy) ** 2 + (xx - jx) ** 2
        lost |= (d2 < jr * jr) & (d2 - jr * jr < own)
    return lost


def _contacts(instances: np.ndarray) -> np.ndarray:
    """Particle pixels with a 4-neighbour in another particle."""
    out = np.zeros(instances.shape, bool)
    for a, b in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[1:, :], np.s_[:-1, :])):
        diff = (instances[a] != instances[b]) & (instances[a] > 0) & (instances[b] > 0)
        out[a] |= diff
        out[b] |= diff
    return out


def make_field(cfg: SynthConfig, seed: int, index: int) -> AnnotatedImage:
    """Wide field `index` of an electrode set (depends only on seed and index)."""
    rng = np.random.default_rng([int(seed), 1, int(index)])
    px = float(cfg.electrode.pixel_size_um)
    hp, wp = (int(v) for v in cfg.electrode.field_px)
    placed = _pack_window(cfg, (hp * px, wp * px), rng)
    instances = np.zeros((hp, wp), np.uint32)
    phases = np.zeros((hp, wp), np.uint8)
    grains = np.full((hp, wp), -1, np.int64)
    boundary = np.zeros((hp, wp), bool)
    particles: list[ParticleAnnotation] = []
    grain_base = 0
    pid = 0
    flatten = float(cfg.electrode.contact_overlap) > 0
    discs = np.array([(y / px, x / px, spec.section_radius_um / px) for y, x, spec in placed]).reshape(-1, 3)
    for k, (y_um, x_um, spec) in enumerate(placed):
        half = canvas_half_px(spec, px)
        cy, cx = int(round(y_um / px)), int(round(x_um / px))
        y0, x0 = cy - half, cx - half
        fy0, fy1 = max(y0, 0), min(y0 + 2 * half + 1, hp)
        fx0, fx1 = max(x0, 0), min(x0 + 2 * half + 1, wp)
        if fy1 <= fy0 or fx1 <= fx0:
            continue  # off the field (only with packed_field_um): never rendered, so its cost is the packing's
        lp = render_particle(cfg, spec, px, rng)
        loc = (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0))
        win = (slice(fy0, fy1), slice(fx0, fx1))
        vis = lp.mask[loc] & (instances[win] == 0)
        if flatten:
            vis &= ~_lost_to_neighbours(k, discs, (fy0, fy1, fx0, fx1))
        lab, n = ndi.label(vis, structure=np.ones((3, 3)))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            vis = lab == int(np.argmax(sizes))
        if vis.sum() < int(cfg.electrode.min_visible_px):
            continue
        ph = np.where(vis, lp.phases[loc], 0).astype(np.uint8)
        crack, cls = canonical_class(vis, ph == Phase.CRACK)
        ph[crack] = Phase.CRACK
        pid += 1
        instances[win][vis] = pid
        phases[win][vis] = ph[vis]
        g = lp.grains[loc]
        grains[win][vis] = g[vis] + grain_base
        grain_base += int(lp.grains.max()) + 1
        boundary[win] |= vis & lp.boundary[loc] & (ph == Phase.SOLID)
        touches = bool(fy0 == 0 and vis[0].any() or fy1 == hp and vis[-1].any() or fx0 == 0 and vis[:, 0].any() or fx1 == wp and vis[:, -1].any())
        particles.append(_annotate(pid, cls, vis, ph, px, spec, touches))
    if flatten:
        # Pressed contacts read as faint lines, like grain boundaries (rendered the same way).
        boundary |= _contacts(instances) & (phases == Phase.SOLID)
    params = ImagingParams.draw(cfg.imaging, rng)
    pixels, instances, phases = _render(phases, instances, grains, boundary, px, params, rng)
    preset = str(cfg.preset.name)
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source="synthetic", source="fracscope.synth"),
        stem=f"synth_{preset}_field_s{seed}_{index:05d}",
        instances=instances,
        phases=phases,
        particles=particles,
        meta=_meta(cfg, seed, "electrode", index, params),
    )


def _field_job(args) -> AnnotatedImage:
    cfg, seed, index = args
    return make_field(cfg, seed, index)


def generate_electrode(cfg: SynthConfig, n_particles: int, seed: int, workers: int | None = None) -> Iterator[AnnotatedImage]:
    """Yield wide fields of touching particles until at least `n_particles` particles.

    Field i depends only on (seed, i); with workers > 1 fields are rendered in parallel
    processes and yielded in order, so the output is the same for any worker count.
    """
    workers = int(cfg.workers if workers is None else workers)
    total = 0
    index = 0
    if workers <= 1:
        while total < n_particles:
            item = make_field(cfg, seed, index)
            total += len(item.particles)
            index += 1
            yield item
        return
    from fracscope.child_process import generator_pool

    with generator_pool(workers) as pool:
        while total < n_particles:
            # Submit about as many fields as still needed so the workers never wait on a batch.
            per_field = total / index if index else 15.0
            k = max(2 * workers, int(math.ceil((n_particles - total) / max(per_field, 1.0))) + 1)
            batch = [(cfg, seed, index + j) for j in range(k)]
            for item in pool.imap(_field_job, batch):
                if total >= n_particles:
                    break
                index += 1
                total += len(item.particles)
                yield item
