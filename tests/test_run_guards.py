"""Issue 19, cases 1, 3, 8 (the log) and 9: a bulk run never succeeds silently.

No input images, or every image failed: one line and exit status 2. Unsupported files in a
folder are skipped rows of errors.csv, counted in the final line. A groups CSV that disagrees
with the inputs stops the run. infer.log holds the settings and a line per image, and stderr
gets that line too when it is not a terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fracscope.cli import USAGE_STATUS, compose, usage_errors
from fracscope.infer import PROG, infer
from fracscope.io import write_image_tiff
from fracscope.pipeline import run

REPO = Path(__file__).resolve().parents[1]
# The shipped model, no detect worker process: the plumbing is under test, not the accuracy.
FAST = ("detect_workers=0", "decode_threads=0", "report.n_boot=10")


def _cfg(input_: Path | str, output: Path, *overrides: str):
    return compose("infer", f"input={input_}", f"output={output}", *FAST, *overrides)


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> Path:
    """Two small generated fields in group folders A and B."""
    from fracscope.synth import load_config, make_field

    cfg = load_config("p", overrides=["electrode.field_px=[256,320]"])
    root = tmp_path_factory.mktemp("fields")
    for group, seed in (("A", 1), ("B", 2)):
        (root / group).mkdir()
        item = make_field(cfg, seed, 0)
        write_image_tiff(root / group / "f0.tif", item.image.pixels, item.image.pixel_size_um)
    return root


def _one_line_usage_error(task, capsys) -> str:
    """Run `task` as the command does; return its one stderr line (exit status 2 checked)."""
    with pytest.raises(SystemExit) as exit_info, usage_errors(PROG, debug=False):
        task()
    assert exit_info.value.code == USAGE_STATUS
    # progress lines ("image 1/2 ...") may come first: stderr is not a terminal under pytest
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("image ")]
    assert len(err) == 1 and err[0].startswith(f"{PROG}: error: ")
    return err[0]


# Case 1: no silent success ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["empty folder", "only unsupported files", "glob typo"])
def test_no_input_images_is_one_line_and_exit_2_before_any_output(tmp_path, layout, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    spec = str(folder)
    if layout == "only unsupported files":
        (folder / "a.emd").write_bytes(b"\x89HDF")
        (folder / "b.dm4").write_bytes(b"\0")
    elif layout == "glob typo":
        (folder / "x.tif").write_bytes(b"")
        spec = str(folder / "*.tiff")
    out = tmp_path / "out"
    line = _one_line_usage_error(lambda: infer(_cfg(spec, out)), capsys)
    assert "no input images" in line and spec in line
    if layout == "only unsupported files":
        assert "1 .emd" in line and "1 .dm4" in line
    assert not out.exists()


def test_every_image_failing_is_one_line_and_exit_2(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "b.png"):
        (folder / name).write_bytes(b"II*\x00 not an image")
    out = tmp_path / "out"
    line = _one_line_usage_error(lambda: infer(_cfg(folder, out)), capsys)
    assert "all 2 input image(s) failed" in line and str(folder) in line
    assert len(pd.read_csv(out / "errors.csv")) == 2


def test_unsupported_files_are_skipped_rows_counted_in_the_final_line(tmp_path, fields, capsys):
    folder = tmp_path / "in"
    (folder / "A").mkdir(parents=True)
    (folder / "A" / "f0.tif").write_bytes((fields / "A" / "f0.tif").read_bytes())
    for name in ("A/x.emd", "y.emd", "z.dm4"):
        (folder / name).write_bytes(b"\0")
    out = tmp_path / "out"
    cfg = _cfg(folder, out)
    infer(cfg)  # no SystemExit: skipped files are not failures
    assert "3 files skipped (2 .emd, 1 .dm4)" in capsys.readouterr().out
    outcome = run(_cfg(folder, tmp_path / "again"))
    assert outcome.exit_code == 0 and outcome.n_images == 1 and not outcome.failures
    errors = pd.read_csv(out / "errors.csv")
    assert sorted(Path(p).name for p in errors["image"]) == ["x.emd", "y.emd", "z.dm4"]
    assert set(errors["error"]) == {"skipped: unsupported format .emd", "skipped: unsupported format .dm4"}


def test_a_resume_with_nothing_to_do_leaves_the_skipped_rows_and_every_file_as_they_were(tmp_path, fields):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "f0.tif").write_bytes((fields / "A" / "f0.tif").read_bytes())
    (folder / "x.emd").write_bytes(b"\0")
    out = tmp_path / "out"
    run(_cfg(folder, out))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.name != "infer.log"}
    outcome = run(_cfg(folder, out, "resume=true"))
    assert outcome.n_images == 0
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file() and p.name != "infer.log"}
    assert after == before  # errors.csv included: its skipped row is not appended a second time


# Case 3: groups_csv strict --------------------------------------------------------------------


def test_groups_csv_mismatch_stops_the_run_unless_not_strict(tmp_path, fields, capsys, caplog):
    groups = tmp_path / "groups.csv"
    groups.write_text("file,group\nA/f0.tif,first\nA/f9.tif,typo\n")  # B/f0.tif has no row
    out = tmp_path / "out"
    line = _one_line_usage_error(lambda: run(_cfg(fields, out, f"groups_csv={groups}")), capsys)
    assert "A/f9.tif" in line and "B/f0.tif" in line and "groups_csv_strict=false" in line
    assert not out.exists()

    outcome = run(_cfg(fields, out, f"groups_csv={groups}", "groups_csv_strict=false"))
    assert outcome.n_images == 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("A/f9.tif" in m and "B/f0.tif" in m and "have no row" in m for m in warned)
    assert set(pd.read_csv(out / "images.csv")["group"]) == {"first", "B"}


# Cases 8 (the log) and 9 (progress without a terminal) ------------------------------------------


def test_settings_and_a_line_per_image_in_the_log_and_on_stderr(tmp_path, fields, capsys, caplog):
    caplog.set_level("INFO")
    run(_cfg(fields, tmp_path / "out"))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("settings:\n") and "groups_csv_strict: true" in m for m in messages)
    per_image = [m for m in messages if m.startswith("image ")]
    assert len(per_image) == 2 and per_image[0].startswith("image 1/2 ") and "ETA" in per_image[0]
    err = capsys.readouterr().err  # not a terminal under pytest: lines, no bar
    assert [line for line in err.splitlines() if line.startswith("image ")] == per_image
    assert "particles/s" in per_image[1]

    run(_cfg(fields, tmp_path / "quiet", "progress=false"))
    assert "image 1/2" not in capsys.readouterr().err


def test_infer_log_of_a_command_run_is_not_empty(tmp_path, fields):
    """Through the command: Hydra's file handler must get INFO lines, and the console only warnings."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, "infer.py", f"input={fields / 'A'}", f"output={out}", *FAST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    log = (out / "infer.log").read_text()
    assert "settings:" in log and "image 1/1 " in log
    assert "image 1/1 " in proc.stderr and "[INFO]" not in proc.stdout


# Issue 21: pixel sizes that cannot be right ----------------------------------------------------


@pytest.fixture(scope="module")
def small_field():
    """The pixels of one small generated field at 0.05 µm/px."""
    from fracscope.synth import load_config, make_field

    item = make_field(load_config("p", overrides=["electrode.field_px=[192,224]"]), 3, 0)
    assert item.image.pixel_size_um == 0.05
    return item.image.pixels


def test_an_se_like_image_is_flagged_warned_and_listed_first_and_the_run_exits_0(tmp_path, caplog):
    from fracscope.synth import load_config, make_field

    base = ["electrode.field_px=[384,512]", "electrode.pixel_size_um=0.06"]
    folder = tmp_path / "in"
    for name, extra in (("a_plain.tif", []), ("b_se.tif", ["imaging.looks=[se_edges]"])):
        _copy_tagged(make_field(load_config("gp", [*base, *extra]), 3, 0).image.pixels, folder, name, 0.06)
    out = tmp_path / "out"
    outcome = run(_cfg(folder, out))
    assert outcome.exit_code == 0 and not outcome.failures
    images = pd.read_csv(out / "images.csv", keep_default_na=False).set_index("image")
    se, plain = str(folder / "b_se.tif"), str(folder / "a_plain.tif")
    assert images.loc[plain, "quality_flags"] == "" and images.loc[plain, "edge_contrast"] < 0.10
    assert images.loc[se, "quality_flags"] == "edge_contrast" and images.loc[se, "edge_contrast"] > 0.10
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [m for m in warned if "bright bands inside the particle outlines" in m][0].startswith(f"{se}: ")
    md = (out / "summary.md").read_text()
    first = md[md.index("## Images to check first"):md.index("## Damage classes")]
    assert f"- `{se}`: bright bands inside the particle outlines" in first and plain not in first


def _copy_tagged(pixels, folder: Path, name: str, pixel_size_um: float) -> Path:
    """`pixels` as `folder/name` with `pixel_size_um` in the tags."""
    folder.mkdir(exist_ok=True)
    write_image_tiff(folder / name, pixels, pixel_size_um)
    return folder / name


def test_a_pixel_size_10x_too_large_is_flagged_warned_and_listed_first_and_the_run_exits_0(
        tmp_path, small_field, caplog):
    folder = tmp_path / "in"
    ok = _copy_tagged(small_field, folder, "a_ok.tif", 0.05)
    coarse = _copy_tagged(small_field, folder, "b_coarse.tif", 0.5)  # 10x too large in the tags
    out = tmp_path / "out"
    infer(_cfg(folder, out))  # no SystemExit: status 0
    images = pd.read_csv(out / "images.csv", keep_default_na=False).set_index("image")
    assert images.loc[str(ok), "quality_flags"] == ""
    assert images.loc[str(coarse), "quality_flags"] == "scale_implausible"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    scale = [m for m in warned if "scale implausible" in m]
    assert len(scale) == 1 and scale[0].startswith(f"{coarse}: ") and "~10x too large" in scale[0]
    md = (out / "summary.md").read_text()
    first = md[md.index("## Images to check first"):md.index("## Damage classes")]
    assert "1 of 2 images flagged" in first and f"- `{coarse}`: scale implausible: pixel size 0.5 µm/px" in first
    assert str(ok) not in first
    flagged = json.loads((out / "summary.json").read_text())["flagged_images"]
    assert [(f["image"], f["page"], f["flags"]) for f in flagged] == [(str(coarse), 0, ["scale_implausible"])]

    # The same through pixel_size_um= on the command line: a warning, a flag, status 0.
    caplog.clear()
    outcome = run(_cfg(ok, tmp_path / "given", "pixel_size_um=0.5"))
    assert outcome.exit_code == 0 and not outcome.failures
    flags = pd.read_csv(tmp_path / "given" / "images.csv", keep_default_na=False)["quality_flags"].tolist()
    assert flags == ["scale_implausible"]
    assert any("scale implausible" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    # 10x too small: the detector sees the image shrunk 30x and finds next to nothing; flagged, status 0.
    caplog.clear()
    outcome = run(_cfg(ok, tmp_path / "fine", "pixel_size_um=0.005"))
    assert outcome.exit_code == 0
    flags = pd.read_csv(tmp_path / "fine" / "images.csv", keep_default_na=False)["quality_flags"].tolist()
    assert flags[0].split(";")[0] == "scale_implausible"
    warned = [r.getMessage() for r in caplog.records if "scale implausible" in r.getMessage()]
    assert len(warned) == 1 and "~10x too small" in warned[0]


def test_nm_typed_as_um_fails_each_image_in_one_line_not_with_a_memory_error(tmp_path, small_field, capsys,
                                                                            caplog):
    ok = _copy_tagged(small_field, tmp_path / "in", "a_ok.tif", 0.05)
    out = tmp_path / "out"
    line = _one_line_usage_error(lambda: infer(_cfg(ok, out, "pixel_size_um=50")), capsys)
    assert "all 1 input image(s) failed" in line
    errors = pd.read_csv(out / "errors.csv")
    assert errors["image"].tolist() == [str(ok)]
    assert errors["error"].tolist() == ["ImplausiblePixelSize: pixel size 50 µm/px would enlarge the image 333x to "
                                        "the detector's 0.15 µm/px; nm typed as µm?"]
    assert not any("MemoryError" in r.getMessage() or r.exc_info for r in caplog.records)


def test_an_image_whose_tags_would_enlarge_it_absurdly_fails_alone(tmp_path, small_field):
    # A tag of 5 µm/px (the readers take up to 10): the detector would enlarge the image 33x.
    ok = _copy_tagged(small_field, tmp_path / "in", "a_ok.tif", 0.05)
    coarse = _copy_tagged(small_field, tmp_path / "in", "b_5um.tif", 5.0)
    outcome = run(_cfg(tmp_path / "in", tmp_path / "out"))
    assert outcome.exit_code == 1 and outcome.n_images == 1
    assert outcome.failures == [(str(coarse), 0, "ImplausiblePixelSize: pixel size 5 µm/px would enlarge the image "
                                                 "33x to the detector's 0.15 µm/px; nm typed as µm?")]
    assert pd.read_csv(tmp_path / "out" / "images.csv")["image"].tolist() == [str(ok)]
