"""Issue 21, out-of-distribution warnings: the quality flags of one image (`fracscope.report.quality`),
exact on constructed results, and how images.csv, summary.json and summary.md carry them."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from fracscope.detect.learned import MAX_ENLARGEMENT, ImplausiblePixelSize, check_enlargement
from fracscope.report import ReportWriter
from fracscope.report.markdown import render_markdown
from fracscope.report.quality import (
    QUALITY_COLUMNS,
    describe_flags,
    grey_level_range,
    grey_levels,
    image_quality,
)
from fracscope.report.summary import scan_particles
from fracscope.report.tables import IMAGE_COLUMNS, ParticleTableWriter, image_row
from fracscope.types import ImageResult, ParticleResult, SEMImage

TRAINED = (0.035, 0.08)


def _particle(pid: int, box: tuple[int, int, int, int], d: float, top: float = 0.9, score: float | None = 0.99,
              border: bool = False) -> ParticleResult:
    rest = (1.0 - top) / 2
    return ParticleResult(pid, "intact", (top, rest, rest), top < 0.6, border, False, box,
                          {"eq_diameter_um": d}, detector_score=score)


def _result(particles: list[ParticleResult], px: float | None = 0.05, pixels: np.ndarray | None = None,
            shape: tuple[int, int] = (100, 100), trained=TRAINED) -> ImageResult:
    """An image whose particles fill their boxes in the instance map; grey levels 20-220 by default."""
    if pixels is None:
        pixels = (20 + np.arange(shape[0] * shape[1]) % 201).astype(np.uint8).reshape(shape)
    instances = np.zeros(shape, np.uint32)
    for p in particles:
        r0, c0, r1, c1 = p.bbox
        instances[r0:r1, c0:c1] = p.particle_id
    image = SEMImage(pixels, px, "tags" if px else "none", "img.tif")
    return ImageResult(image, "img", "g", instances, np.zeros(shape, np.uint8), particles, trained)


def _fine() -> list[ParticleResult]:
    # 3 sections of 5, 6 and 7 µm covering 3 x 400 of 10000 px (12 %); one touches the border
    return [_particle(1, (0, 0, 20, 20), 50.0, border=True), _particle(2, (30, 30, 50, 50), 6.0, top=0.8),
            _particle(3, (60, 60, 80, 80), 7.0, top=1.0, score=0.97)]


def test_a_plausible_image_has_no_flag_and_exact_numbers():
    q = image_quality(_result(_fine()))
    assert q.flags == ()
    assert q.particle_area_fraction == 0.12
    assert q.median_eq_diameter == 6.5  # the border section (50 µm) is left out
    assert q.mean_class_confidence == pytest.approx(0.9)
    assert q.mean_detector_score == pytest.approx(0.9833333, abs=1e-6)
    assert q.saturated_fraction == 0.0
    assert q.grey_range_fraction == pytest.approx((218 - 22) / 255, abs=0.01)


@pytest.mark.parametrize(("d", "px", "words"), [
    (0.8, 0.05, "pixel size ~10x too small, or primary grains counted as particles"),
    (45.0, 0.05, "pixel size ~10x too large, or clusters of particles counted as one"),
    (6.0, 0.5, "is 6x the largest pixel size the models were trained on (0.035-0.08 µm/px)"),
    (6.0, 0.005, "is 1/7 of the smallest pixel size the models were trained on"),
])
def test_an_implausible_scale_is_flagged_with_its_likely_cause(d, px, words):
    parts = [_particle(1, (10, 10, 40, 40), d), _particle(2, (50, 50, 80, 80), d)]
    result = _result(parts, px=px)
    assert image_quality(result).flags == ("scale_implausible",)
    (reason,) = describe_flags(image_row(result), TRAINED)
    assert reason.startswith("scale implausible: ") and words in reason


def test_the_scale_limits_are_where_the_constants_say():
    for d, px, flagged in [(1.0, 0.05, False), (40.0, 0.05, False), (0.99, 0.05, True), (6.0, 0.24, False),
                           (6.0, 0.2401, True), (6.0, 0.035 / 3, False), (6.0, 0.0116, True)]:
        parts = [_particle(1, (10, 10, 40, 40), d), _particle(2, (50, 50, 80, 80), d)]
        assert ("scale_implausible" in image_quality(_result(parts, px=px)).flags) == flagged, (d, px)


def test_without_a_pixel_size_or_a_trained_range_only_what_is_known_is_checked():
    # lengths in px: 0.8 "px" says nothing about the scale
    parts = [_particle(1, (10, 10, 40, 40), 0.8), _particle(2, (50, 50, 80, 80), 0.8)]
    assert image_quality(_result(parts, px=None)).flags == ()
    # no trained range (e.g. segmenter=threshold without a model file): the median still counts
    assert image_quality(_result(parts, px=0.5, trained=None)).flags == ("scale_implausible",)
    parts = [_particle(1, (10, 10, 40, 40), 6.0), _particle(2, (50, 50, 80, 80), 6.0)]
    assert image_quality(_result(parts, px=0.5, trained=None)).flags == ()


def test_no_particle_is_few_particles_alone():
    q = image_quality(_result([]))
    assert q.flags == ("few_particles",)
    assert q.mean_class_confidence is None and q.median_eq_diameter is None and q.particle_area_fraction == 0.0


@pytest.mark.parametrize(("boxes", "fraction"), [([(0, 0, 10, 40)], 0.04), ([(0, 0, 100, 96)], 0.96)])
def test_a_particle_area_fraction_outside_5_to_95_percent_is_flagged(boxes, fraction):
    parts = [_particle(i + 1, b, 6.0) for i, b in enumerate(boxes)]
    q = image_quality(_result(parts))
    assert q.particle_area_fraction == fraction and q.flags == ("particle_area_fraction",)
    (reason,) = describe_flags(image_row(_result(parts)))
    assert f"particles cover {fraction:.1%} of the image" in reason


def test_low_mean_class_confidence_and_detector_score():
    parts = [_particle(1, (10, 10, 40, 40), 6.0, top=0.5, score=0.94),
             _particle(2, (50, 50, 80, 80), 6.0, top=0.89, score=0.97)]
    q = image_quality(_result(parts))
    assert q.mean_class_confidence == pytest.approx(0.695) and q.mean_detector_score == pytest.approx(0.955)
    assert q.flags == ("low_detector_score", "low_class_confidence")
    parts[0] = _particle(1, (10, 10, 40, 40), 6.0, top=0.51, score=None)  # mean 0.7: not below
    q = image_quality(_result(parts))
    assert q.flags == () and q.mean_detector_score == pytest.approx(0.97)
    no_scores = [_particle(1, (10, 10, 40, 40), 6.0, score=None)]
    assert image_quality(_result(no_scores)).mean_detector_score is None  # e.g. the classical detector


def test_grey_level_range_follows_the_data_not_the_container():
    assert grey_level_range(np.array([[0, 255]], np.uint8)) == (0.0, 255.0)
    assert grey_level_range(np.array([[0, 4000]], np.uint16)) == (0.0, 4095.0)  # a 12-bit detector
    assert grey_level_range(np.array([[0, 40]], np.uint16)) == (0.0, 255.0)
    assert grey_level_range(np.array([[0.2, 0.7]], np.float32)) == (0.0, 1.0)
    assert grey_level_range(np.array([[-3.0, 5.0]], np.float32)) == (-3.0, 5.0)


def test_clipped_or_flat_grey_levels_are_flagged():
    pixels = (20 + np.arange(10000) % 201).astype(np.uint8).reshape(100, 100)
    pixels[:21] = 255  # 21 % of the pixels at the brightest level
    assert grey_levels(pixels)[0] == 0.21
    result = _result(_fine(), pixels=pixels)
    assert image_quality(result).flags == ("grey_levels",)
    assert "21% of the pixels at the darkest or brightest grey level" in describe_flags(image_row(result))[0]
    pixels[:21] = 0  # the darkest level counts the same
    assert image_quality(_result(_fine(), pixels=pixels)).saturated_fraction == 0.21
    flat = (100 + np.arange(10000) % 10).astype(np.uint8).reshape(100, 100)  # 10 of 256 levels
    saturated, spread = grey_levels(flat)
    assert saturated == 0.0 and spread == pytest.approx(9 / 255)
    assert image_quality(_result(_fine(), pixels=flat)).flags == ("grey_levels",)
    twelve_bit = (flat.astype(np.uint16) * 16 + 2000)  # the same contrast in a 12-bit image
    assert grey_levels(twelve_bit)[1] == pytest.approx(144 / 4095)


def test_an_estimated_pixel_size_too_coarse_for_the_networks_is_flagged_and_said_in_words(tmp_path):
    parts = [_particle(1, (10, 10, 40, 40), 20.0), _particle(2, (50, 50, 80, 80), 20.0)]  # lengths in px
    for estimate, flagged in [(0.24, False), (0.2401, True), (0.33, True), (0.005, False), (None, False)]:
        result = _result(parts, px=None)
        result.image.estimated_pixel_size_um = estimate
        assert ("coarse_pixels" in image_quality(result).flags) == flagged, estimate
    result = _result(parts, px=None)
    result.image.estimated_pixel_size_um = 0.33
    row = image_row(result)
    assert row["quality_flags"] == "coarse_pixels"
    (reason,) = describe_flags(row, TRAINED)
    assert reason.startswith("coarse pixels: estimated pixel size 0.33 µm/px is 4x the largest") and "lower bounds" in reason
    # summary.md reads the reason back from images.csv (the estimate's column included).
    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10, "write_plots": False, "write_review": False}},
                          {"phase_model_metadata": {"pixel_size_range_um": list(TRAINED)}})
    writer.add(result)
    md = render_markdown(writer.close())
    assert "- `img.tif`: coarse pixels: estimated pixel size 0.33 µm/px is 4x the largest" in md
    # A given pixel size is judged by scale_implausible alone; no trained range, no judgement.
    given = _result(parts, px=0.05)
    given.image.estimated_pixel_size_um = 0.33
    assert "coarse_pixels" not in image_quality(given).flags
    untrained = _result(parts, px=None, trained=None)
    untrained.image.estimated_pixel_size_um = 0.33
    assert image_quality(untrained).flags == ()


def test_uneven_illumination_is_flagged_over_the_limit_and_said_in_words(tmp_path, caplog):
    from fracscope.illumination import SHADING_LIMIT

    parts = [_particle(1, (10, 10, 40, 40), 8.0), _particle(2, (50, 50, 80, 80), 9.0)]
    for shading, flagged in [(None, False), (0.0, False), (SHADING_LIMIT, False), (SHADING_LIMIT + 1e-6, True),
                             (0.4, True)]:
        result = _result(parts)
        result.shading = shading
        assert ("uneven_illumination" in image_quality(result).flags) == flagged, shading
    result = _result(parts)
    result.shading, result.illumination_evened = 0.28, True
    row = image_row(result)
    assert row["quality_flags"] == "uneven_illumination" and row["shading"] == 0.28 and row["illumination_evened"] is True
    (reason,) = describe_flags(row, TRAINED)
    assert reason == ("uneven illumination: the particles' grey level drifts by 28% across the image (evened out "
                      "before detection and measurement; check the overlay)")
    result.illumination_evened = False
    (reason,) = describe_flags(image_row(result), TRAINED)
    assert "not evened out, even_illumination=false" in reason
    # A warning per image only where the drift was left as it is (evened out: summary.md says it).
    for evened, warned in [(False, True), (True, False)]:
        result.illumination_evened = evened
        with caplog.at_level(logging.WARNING, logger="fracscope.report.writer"):
            caplog.clear()
            ReportWriter(tmp_path / str(evened), {"report": {"n_boot": 10, "write_plots": False,
                                                            "write_review": False}},
                         {"phase_model_metadata": {"pixel_size_range_um": list(TRAINED)}}).add(result)
        said = [r.getMessage() for r in caplog.records if "uneven illumination" in r.getMessage()]
        assert said == ([f"img.tif: {reason}"] if warned else []), said
    # summary.md reads it back from images.csv (True as written there).
    result.illumination_evened = True
    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10, "write_plots": False, "write_review": False}},
                          {"phase_model_metadata": {"pixel_size_range_um": list(TRAINED)}})
    writer.add(result)
    md = render_markdown(writer.close())
    assert "- `img.tif`: uneven illumination: the particles' grey level drifts by 28% across the image (evened" in md


def test_edge_contrast_is_flagged_over_the_limit_and_said_in_words(tmp_path):
    from fracscope.edges import EDGE_CONTRAST_LIMIT

    parts = [_particle(1, (10, 10, 40, 40), 8.0), _particle(2, (50, 50, 80, 80), 9.0)]
    for edge, flagged in [(None, False), (-0.1, False), (EDGE_CONTRAST_LIMIT, False),
                          (EDGE_CONTRAST_LIMIT + 1e-6, True), (0.3, True)]:
        result = _result(parts)
        result.edge_contrast = edge
        assert ("edge_contrast" in image_quality(result).flags) == flagged, edge
    result = _result(parts)
    result.edge_contrast = 0.25
    row = image_row(result)
    assert row["quality_flags"] == "edge_contrast" and row["edge_contrast"] == 0.25
    (reason,) = describe_flags(row, TRAINED)
    assert reason.startswith("bright bands inside the particle outlines (0.25 of the particle-matrix contrast), "
                             "as a secondary-electron image shows")
    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10, "write_plots": False, "write_review": False}},
                          {"phase_model_metadata": {"pixel_size_range_um": list(TRAINED)}})
    writer.add(result)
    md = render_markdown(writer.close())
    assert "- `img.tif`: bright bands inside the particle outlines (0.25 of the" in md


def test_the_images_csv_row_appends_the_quality_columns_after_the_old_ones():
    # Appended in order: the quality columns after the resume key, then pore_polarity (session 14), then
    # n_curtain_streaks (session 20), then shading and illumination_evened (session 21), then edge_contrast
    # (session 23).
    assert IMAGE_COLUMNS[-len(QUALITY_COLUMNS) - 5:-5] == QUALITY_COLUMNS
    assert IMAGE_COLUMNS[-5:] == ("pore_polarity", "n_curtain_streaks", "shading", "illumination_evened",
                                  "edge_contrast")
    assert IMAGE_COLUMNS[:3] == ("image", "page", "stem")
    assert IMAGE_COLUMNS[-len(QUALITY_COLUMNS) - 6] == "source_mtime_ns"
    row = image_row(_result([_particle(1, (10, 10, 40, 40), 0.5)]))
    assert list(row) == list(IMAGE_COLUMNS)
    assert row["quality_flags"] == "scale_implausible" and row["median_eq_diameter"] == 0.5


def test_a_resume_of_an_older_images_csv_keeps_its_header_and_reports_no_flags(tmp_path):
    # The header before this session's columns (the pixel-size estimate and the quality columns).
    old = tuple(c for c in IMAGE_COLUMNS[: IMAGE_COLUMNS.index("source_mtime_ns") + 1] if c != "pixel_size_estimate_um")
    values = {"image": "a.tif", "page": 0, "stem": "a", "group": "g", "height_px": 10, "width_px": 10,
              "pixel_size_um": 0.05, "pixel_size_source": "tags", "length_unit": "um",
              "source_path": "/x/a.tif", "source_size_bytes": 1, "source_mtime_ns": 1}
    with (tmp_path / "images.csv").open("w", newline="") as f:
        csv.writer(f).writerows([old, [values.get(c, 0) for c in old]])
    tables = ParticleTableWriter(tmp_path, resume=True)
    assert tables.done == {("a.tif", 0)}
    with pytest.warns(UserWarning, match="not in the header; dropped"):
        tables.commit(image_row(_result([])))
    tables.close()
    rows = list(csv.reader((tmp_path / "images.csv").open()))
    assert tuple(rows[0]) == old and len(rows) == 3 and all(len(r) == len(old) for r in rows)
    assert scan_particles(tmp_path, ReportWriter(tmp_path / "x", None, None).options).flagged == []


def test_summary_lists_the_flagged_images_first_with_their_reasons(tmp_path):
    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10, "write_plots": False, "write_review": False}},
                          {"phase_model_metadata": {"pixel_size_range_um": list(TRAINED)}})
    fine = _result(_fine())
    writer.add(fine)
    wrong = _result([_particle(1, (10, 10, 40, 40), 6.0)], px=0.5)
    wrong.stem, wrong.image.source = "wrong", "wrong.tif"
    writer.add(wrong)
    summary = writer.close()
    (entry,) = summary.flagged
    assert entry["image"] == "wrong.tif" and entry["page"] == 0 and entry["flags"] == ["scale_implausible"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["flagged_images"] == [entry] and saved["schema_version"] == "1.2"
    md = render_markdown(summary)
    section = md[md.index("## Images to check first"):md.index("## Damage classes")]
    assert "1 of 2 images flagged" in section
    assert "- `wrong.tif`: scale implausible: pixel size 0.5 µm/px is 6x the largest" in section
    assert "img.tif" not in section

    clean = ReportWriter(tmp_path / "clean", {"report": {"n_boot": 10, "write_plots": False, "write_review": False}},
                         None)
    clean.add(_result(_fine()))
    assert "No image was flagged (1 checked" in render_markdown(clean.close())


def test_summary_says_how_many_curtain_streaks_were_not_counted_as_cracks(tmp_path):
    options = {"report": {"n_boot": 10, "write_plots": False, "write_review": False}}
    writer = ReportWriter(tmp_path, options, None)
    writer.add(_result(_fine()))
    milled = _result(_fine())
    milled.stem, milled.image.source, milled.curtain_streaks = "milled", "milled.tif", 3
    writer.add(milled)
    summary = writer.close()
    assert summary.curtains == {"images": 2, "images_with_streaks": 1, "streaks": 3}
    assert json.loads((tmp_path / "summary.json").read_text())["curtains"] == summary.curtains
    assert "Curtaining: in 1 of 2 images, 3 crack lines along the milling direction" in render_markdown(summary)
    clean = ReportWriter(tmp_path / "clean", options, None)
    clean.add(_result(_fine()))
    assert "Curtaining" not in render_markdown(clean.close())


# The scale guard before a model resamples an image ---------------------------------------------


def test_a_pixel_size_that_would_enlarge_an_image_absurdly_is_one_line_naming_the_cause():
    assert check_enlargement(1.0, 0.05, "phase model") == pytest.approx(MAX_ENLARGEMENT)  # the limit itself passes
    with pytest.raises(ImplausiblePixelSize) as info:
        check_enlargement(50.0, 0.05, "phase model")
    assert str(info.value) == ("pixel size 50 µm/px would enlarge the image 1000x to the phase model's 0.05 µm/px; "
                               "nm typed as µm?")
    with pytest.raises(ImplausiblePixelSize, match="0.5 µm/px would enlarge the image 25x .* a wrong pixel size"):
        check_enlargement(0.5, 0.02, "detector")


def test_both_shipped_models_check_before_they_allocate():
    from fracscope.detect.learned import LearnedDetector
    from fracscope.phase_map import PhaseMapModel

    pixels = np.zeros((4096, 4096), np.uint8)  # enlarged 1000x it would need 67 TB
    with pytest.raises(ImplausiblePixelSize, match="1000x to the phase model's 0.05 µm/px; nm typed as µm"):
        PhaseMapModel().predict(pixels, 50.0)
    with pytest.raises(ImplausiblePixelSize, match="333x to the detector's 0.15 µm/px; nm typed as µm"):
        LearnedDetector().detect(SEMImage(pixels, 50.0))


def test_summary_md_lists_at_most_100_flagged_images_and_counts_the_rest(tmp_path):
    from fracscope.report.markdown import MAX_FLAGGED_LINES
    from fracscope.report.options import ReportOptions
    from fracscope.report.summary import build_summary

    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10}}, None)
    scan = scan_particles(tmp_path, writer.options)
    scan.flagged = [{"image": f"i{k}.tif", "page": "0", "quality_flags": "few_particles"} for k in range(103)]
    md = render_markdown(build_summary(scan, ReportOptions(n_boot=10), {}, []))
    listed = [line for line in md.splitlines() if line.startswith("- `i")]
    assert len(listed) == MAX_FLAGGED_LINES and listed[0].startswith("- `i0.tif`: no particle found")
    assert "- … and 3 more: images.csv rows with a non-empty `quality_flags`" in md


def test_summary_md_says_when_the_int8_models_ran_in_their_reference_form(tmp_path):
    from fracscope.report.options import ReportOptions
    from fracscope.report.summary import build_summary

    writer = ReportWriter(tmp_path, {"report": {"n_boot": 10}}, None)
    scan = scan_particles(tmp_path, writer.options)
    reference = render_markdown(build_summary(scan, ReportOptions(n_boot=10), {"int8_kernels": "reference"}, []))
    assert "- int8 models: run in their reference form (this x86 CPU has no VNNI" in reference
    fused = render_markdown(build_summary(scan, ReportOptions(n_boot=10), {"int8_kernels": "fused"}, []))
    assert "int8 models" not in fused
