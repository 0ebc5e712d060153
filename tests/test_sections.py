"""The section window (`fracscope.sections`): exact checks on drawn sections."""

from __future__ import annotations

import numpy as np
import pytest

from fracscope.sections import SECTION_CHANNELS, SectionWindow, section_input, section_inputs
from fracscope.types import Phase


def _disc(side: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    c = (side - 1) / 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= radius**2


def test_window_side_rule() -> None:
    w = SectionWindow()
    assert (w.size_px, w.margin, w.channels) == (64, 1.15, SECTION_CHANNELS)
    assert w.side_px(240, 200) == 276  # ceil(1.15 x 240)
    assert w.side_px(100, 241) == 278  # ceil(277.15): the longer side rules
    assert w.side_px(30, 20) == 64  # a small section is padded, never enlarged
    with pytest.raises(ValueError):
        SectionWindow(margin=0.9)


def test_one_pixel_crack_survives_the_shrink() -> None:
    """A one-pixel crack line across a 240-px disc stays a line of crack pixels in the 64-px window."""
    mask = _disc(240, 119.5)
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[120, :][mask[120, :]] = Phase.CRACK
    x = section_input(np.where(mask, 0.7, 0.0), mask, phases)
    assert x.shape == (4, 64, 64) and x.dtype == np.float32
    crack = x[3]
    rows = np.flatnonzero(crack.max(axis=1) > 0)
    assert len(rows) == 1  # one row of the window: a line, not smeared
    on = crack[rows[0]] == 1.0
    # Window side 276 px -> 64 px: the disc spans 240 / 276 x 64 = 55.7 window px; the crack all of it.
    assert 54 <= on.sum() <= 57
    assert np.array_equal(np.flatnonzero(on), np.arange(np.flatnonzero(on)[0], np.flatnonzero(on)[-1] + 1))
    assert x[2].sum() == 0  # no pore


def test_mask_and_pore_channels_keep_areas() -> None:
    mask = _disc(240, 119.5)
    pore = _disc(240, 20.0)  # a central pore of known area
    phases = np.where(mask, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[pore] = Phase.PORE
    x = section_input(np.where(mask, 0.7, 0.0), mask, phases)
    scale = (SectionWindow().side_px(240, 240) / 64) ** 2
    assert x[1].sum() * scale == pytest.approx(mask.sum(), rel=1e-4)
    assert x[2].sum() * scale == pytest.approx(pore.sum(), rel=1e-4)
    assert x[0].sum() * scale == pytest.approx(0.7 * mask.sum(), rel=1e-4)  # grey only inside the mask
    assert x[3].sum() == 0


def test_outside_the_mask_is_zero_and_small_sections_are_padded() -> None:
    """Grey and phases outside the mask never reach the window; a 20-px section keeps its size (padded)."""
    mask = _disc(20, 9.5)
    grey = np.full((20, 20), 0.9)
    phases = np.full((20, 20), Phase.CRACK, np.uint8)  # crack everywhere, but only inside the mask counts
    x = section_input(grey, mask, phases)
    assert x[1].sum() == pytest.approx(mask.sum())  # side 64 = size: one window px per source px
    assert np.array_equal(x[3] > 0, x[1] > 0)
    assert x[0].sum() == pytest.approx(0.9 * mask.sum(), rel=1e-5)


def test_batch_helper_matches_single_sections() -> None:
    instances = np.zeros((300, 400), np.uint32)
    instances[10:60, 20:90] = 1
    instances[100:290, 150:340][_disc(190, 94.5)] = 2
    phases = np.where(instances > 0, Phase.SOLID, 0).astype(np.uint8)
    phases[195, 160:330] = Phase.CRACK
    from fracscope.crop import normalize_intensity

    pixels = np.random.default_rng(0).integers(0, 256, (300, 400)).astype(np.uint8)
    batch = section_inputs(pixels, instances, phases, [2, 1])
    assert batch.shape == (2, 4, 64, 64)
    r, c = np.nonzero(instances == 2)
    box = (slice(r.min(), r.max() + 1), slice(c.min(), c.max() + 1))
    grey = normalize_intensity(pixels)  # the grey level is normalised over the whole image
    assert np.array_equal(batch[0], section_input(grey[box], instances[box] == 2, phases[box]))
    assert batch[0, 3].max() == 1.0 and batch[1, 3].max() == 0.0
    with pytest.raises(ValueError):
        section_inputs(pixels, instances, phases, [3])


def test_the_section_window_imports_without_torch_or_onnxruntime() -> None:
    """Inference builds the windows: numpy, scipy and cv2 only."""
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = ("import sys, fracscope.sections; "
            "assert not {'torch', 'onnxruntime'} & set(sys.modules), sorted({'torch', 'onnxruntime'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src), "PATH": ""})


def test_the_product_window_is_the_measured_prototypes() -> None:
    """`section_inputs` gives exactly `bench/section_net.py`'s inputs (what docs/BENCHMARKS.md measured; the
    prototype takes the field normalised as a whole), sections at the image border and smaller than the window
    included."""
    import sys
    from pathlib import Path

    from fracscope.crop import normalize_intensity

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import section_net

    rng = np.random.default_rng(1)
    instances = np.zeros((400, 500), np.uint32)
    yy, xx = np.mgrid[:400, :500]
    for k, (cy, cx, r) in enumerate([(100, 100, 37), (250, 300, 120), (380, 480, 30), (50, 400, 8)]):
        instances[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (instances == 0)] = k + 1
    codes = rng.integers(0, 4, instances.shape).astype(np.uint8)
    pixels = rng.integers(0, 256, instances.shape).astype(np.uint8)
    ours = section_inputs(pixels, instances, codes, [1, 2, 3, 4])
    grey = normalize_intensity(pixels)
    theirs = np.stack([section_net.section_input(grey, instances, codes, pid, 64) for pid in (1, 2, 3, 4)])
    assert np.array_equal(ours, theirs)


def test_inference_inputs_equal_the_training_windows() -> None:
    """At inference the grey range is taken once and applied box by box (`sections_of_image`), and each detected
    box is tightened to its mask; the windows equal those of the whole field normalised first, each section in its
    own tight box (`section_input` on `normalize_intensity`, as the measured prototype built them)."""
    from scipy import ndimage as ndi

    from fracscope.crop import normalize_intensity
    from fracscope.sections import sections_of_image
    from fracscope.synth import load_config, make_field

    item = make_field(load_config("p", overrides=["electrode.field_px=[256,320]"]), 3, 0)
    pixels, instances = item.image.pixels, item.instances
    rng = np.random.default_rng(0)
    phases = [Phase.SOLID, Phase.PORE, Phase.CRACK]
    codes = rng.choice(phases, size=instances.shape, p=[0.9, 0.07, 0.03]).astype(np.uint8)
    ids = [int(i) for i in np.unique(instances) if i][:6]
    window = SectionWindow(size_px=48, margin=1.2)
    grey = normalize_intensity(pixels)
    boxes = ndi.find_objects(instances)
    training = np.stack([section_input(grey[b], instances[b] == i, codes[b], window)
                         for i in ids for b in [boxes[i - 1]]])
    # detected boxes are wider than the trimmed outline: 3 px more on each side (within the field)
    h, w = instances.shape
    wide = [(max(b[0].start - 3, 0), max(b[1].start - 3, 0), min(b[0].stop + 3, h), min(b[1].stop + 3, w))
            for b in (boxes[i - 1] for i in ids)]
    sections = [(box, instances[box[0]:box[2], box[1]:box[3]] == i) for i, box in zip(ids, wide)]
    inference = sections_of_image(pixels, codes, sections, window)
    assert len(ids) >= 3 and inference.shape == training.shape == (len(ids), 4, 48, 48)
    assert np.array_equal(inference, training)
    assert sections_of_image(pixels, codes, [], window).shape == (0, 4, 48, 48)
