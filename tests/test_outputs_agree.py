"""The outputs agree with docs/OUTPUTS.md: overlays draw uncounted sections in one neutral style, the bbox
columns are the measured mask's box, COCO file_name is the path below the input folder, and evaluate writes
only under its output_dir."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

import fracscope.analysis as analysis
import fracscope.pipeline as pipeline
from fracscope.assets import SAMPLE_DIR
from fracscope.cli import compose
from fracscope.report.coco import file_name
from fracscope.report.options import ReportOptions
from fracscope.report.overlay import CLASS_RGB, UNCOUNTED_RGB, render_overlay, uncounted_text
from fracscope.types import AnnotatedImage, ImageResult, ParticleAnnotation, ParticleResult, Phase, SEMImage

from scenes import disc

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "models" / "fracscope_default.onnx"


def _result(stem: str = "f", image: SEMImage | None = None) -> ImageResult:
    """Particle 1 counted (broken), particle 2 too small (broken), each with a pore pixel at its centre."""
    h, w = 60, 100
    inst = np.zeros((h, w), np.uint32)
    inst[disc((h, w), (30, 25), 15)] = 1
    inst[disc((h, w), (30, 75), 8)] = 2
    phases = np.where(inst > 0, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    phases[30, 25] = phases[30, 75] = Phase.PORE
    pixels = np.random.default_rng(0).integers(60, 200, (h, w)).astype(np.uint8)
    probs = (0.1, 0.1, 0.8)
    particles = [
        ParticleResult(1, "broken", probs, False, False, False, (15, 10, 46, 41)),
        ParticleResult(2, "broken", probs, False, False, True, (22, 67, 39, 84)),
    ]
    return ImageResult(image or SEMImage(pixels, 0.05), stem, "", inst, phases, particles)


def _outline(labels: np.ndarray, pid: int) -> np.ndarray:
    from fracscope.report.overlay import inner_edges

    return inner_edges(labels, width=2) & (labels == pid)


def test_overlay_draws_an_uncounted_section_in_the_neutral_style_not_a_class_colour():
    res = _result()
    h, w = res.instances.shape
    rgb = render_overlay(res, show_ids=False)[:h, :w]  # the legend strip is below (and the canvas wider)
    counted = {tuple(c) for c in rgb[_outline(res.instances, 1)]}
    uncounted = {tuple(c) for c in rgb[_outline(res.instances, 2)]}
    assert CLASS_RGB["broken"] in counted
    assert not uncounted & set(CLASS_RGB.values())
    assert uncounted == set(UNCOUNTED_RGB)  # dashed: both dash colours, nothing else
    # No tint in the uncounted section: its pore pixel keeps the image's grey; the counted one is tinted.
    assert len(set(rgb[30, 75])) == 1 and len(set(rgb[30, 25])) > 1
    # With too-small sections counted, it is drawn in its class colour.
    everything = render_overlay(res, show_ids=False, options=ReportOptions(count_too_small=True))[:h, :w]
    assert CLASS_RGB["broken"] in {tuple(c) for c in everything[_outline(res.instances, 2)]}


def test_overlay_legend_names_what_is_not_counted():
    assert uncounted_text(ReportOptions()) == "not counted: too small or cut by the border"
    assert uncounted_text(ReportOptions(count_border_particles=True)) == "not counted: too small"
    assert uncounted_text(ReportOptions(count_border_particles=True, count_too_small=True)) is None


def test_coco_file_name_of_a_page_is_its_own():
    root = Path("/data")
    one = SEMImage(np.zeros((4, 4), np.uint8), None, source="/data/A/sub/f.tif")
    assert file_name(_result("A__sub__f", one), root) == "A/sub/f.tif"
    assert file_name(_result("A__sub__f", one), None) == "f.tif"
    page = SEMImage(np.zeros((4, 4), np.uint8), None, source="/data/A/f.tif", page=1, n_pages=3)
    assert file_name(_result("A__f_p001", page), root) == "A/f_p001.tif"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One sample image below two sub-folders, run through the pipeline; counts the particles whose
    rim trim changed the detector's box."""
    root = tmp_path_factory.mktemp("input")
    (root / "GP" / "day 1").mkdir(parents=True)
    shutil.copy(SAMPLE_DIR / "P-NCM_100cyc" / "field_00.tif", root / "GP" / "day 1" / "field_00.tif")
    out = tmp_path_factory.mktemp("out")
    trimmed_box = []
    original = analysis.particle_phases

    def box(mask: np.ndarray) -> tuple[int, ...]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        return (rows[0], cols[0], rows[-1], cols[-1]) if rows.size else ()

    def watched(codes, region, own, trim=(), *rest):
        found = original(codes, region, own, trim, *rest)
        trimmed_box.append(box(found.mask) != box(own))
        return found

    mp = pytest.MonkeyPatch()
    mp.setattr(analysis, "particle_phases", watched)
    try:
        pipeline.run(compose("infer", f"input={root}", f"output={out}", "report.n_boot=10"))
    finally:
        mp.undo()
    return out, int(np.sum(trimmed_box))


def test_bbox_columns_are_the_measured_mask_box(sample_run):
    out, n_trimmed_box = sample_run
    assert n_trimmed_box > 0  # the trim changed boxes in this run
    rows = pd.read_csv(out / "particles.csv")
    labels = tifffile.imread(out / "instances" / "GP__day 1__field_00.tif")
    from scipy import ndimage as ndi

    boxes = ndi.find_objects(labels)
    for row in rows.itertuples():
        rs, cs = boxes[row.particle_id - 1]
        assert (row.bbox_row0, row.bbox_col0, row.bbox_row1, row.bbox_col1) == (rs.start, cs.start, rs.stop, cs.stop)
    coco = json.loads((out / "predictions_coco.json").read_text())
    by_id = {a["attributes"]["particle_id"]: a["bbox"] for a in coco["annotations"]}
    for row in rows.itertuples():
        x, y, w, h = by_id[row.particle_id]
        assert (row.bbox_row0, row.bbox_col0, row.bbox_row1, row.bbox_col1) == (y, x, y + h, x + w)


def test_coco_file_name_is_the_path_below_the_input_folder(sample_run):
    out, _ = sample_run
    coco = json.loads((out / "predictions_coco.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["GP/day 1/field_00.tif"]


def _evaluate(cwd: Path, monkeypatch, *overrides: str) -> int:
    """`fracscope-evaluate` in this process (a subprocess pays the training stack's import twice)."""
    from fracscope.evaluate import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["fracscope-evaluate", *overrides])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        main()
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.mark.train  # fracscope.evaluate imports the training stack
def test_evaluate_writes_under_output_dir_and_nothing_on_a_mistake(tmp_path, monkeypatch):
    from fracscope.data import write_dataset

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert _evaluate(cwd, monkeypatch, f"dataset={tmp_path}/nope", f"model_path={SHIPPED_MODEL}") == 2
    assert list(cwd.iterdir()) == []

    h, w = 120, 160
    inst = np.zeros((h, w), np.uint32)
    inst[disc((h, w), (60, 50), 30)] = 1
    inst[disc((h, w), (60, 120), 25)] = 2
    phases = np.where(inst > 0, Phase.SOLID, Phase.BACKGROUND).astype(np.uint8)
    pixels = np.where(inst > 0, 200, 60).astype(np.uint8)
    item = AnnotatedImage(SEMImage(pixels, 0.05, "synthetic"), "two", inst, phases,
                          [ParticleAnnotation(1, "intact", {}), ParticleAnnotation(2, "intact", {})])
    write_dataset(tmp_path / "set", [item])
    assert _evaluate(cwd, monkeypatch, f"dataset={tmp_path}/set", f"model_path={SHIPPED_MODEL}", "output_dir=scores") == 0
    assert [p.name for p in cwd.iterdir()] == ["scores"]
    assert (cwd / "scores" / "metrics.json").exists()


def test_phase_map_covers_exactly_the_particles_of_the_table(sample_run):
    out, _ = sample_run
    stem = "GP__day 1__field_00"
    phases = tifffile.imread(out / "phases" / f"{stem}.tif")
    labels = tifffile.imread(out / "instances" / f"{stem}.tif")
    rows = pd.read_csv(out / "particles.csv")
    assert phases.dtype == np.uint8 and phases.shape == labels.shape
    assert set(np.unique(phases)) <= {int(p) for p in Phase}
    # Every coded pixel lies in a particle of particles.csv, and every such particle is coded.
    assert not (phases[labels == 0]).any()
    assert set(np.unique(labels[phases > 0])) == set(rows["particle_id"])
    assert (phases[labels > 0] > 0).all()
    # The file holds the pixels the table measured: Eq. 1 porosity per particle from the two maps.
    for row in rows.itertuples():
        section = labels == row.particle_id
        pct = 100 * np.count_nonzero(phases[section] == Phase.PORE) / section.sum()
        assert pct == pytest.approx(row.porosity_pct, abs=1e-6)
