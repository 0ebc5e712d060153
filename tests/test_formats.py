"""Round trips of the four dataset formats, and their error messages."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import tifffile

from fracscope.data import detect_format, read_dataset, write_dataset
from fracscope.data.formats import canonical_class_name
from fracscope.data.formats.class_folders import write_class_folders
from fracscope.data.formats.coco import write_coco
from fracscope.data.formats.label_csv import write_label_csv
from fracscope.measure import measure_particle
from fracscope.types import CLASS_NAMES, AnnotatedImage, ParticleAnnotation, Phase, SEMImage

from scenes import disc


def make_item(
    stem: str, dtype=np.uint8, shape=(80, 112), seed: int = 0, n: int = 3, px: float | None = 0.0375
) -> AnnotatedImage:
    """Discs (two touching) with pores and a crack, classes cycling through CLASS_NAMES."""
    rng = np.random.default_rng(seed)
    instances = np.zeros(shape, np.uint32)
    phases = np.zeros(shape, np.uint8)
    centres = [(30, 28), (34, 58), (56, 90)][:n]
    radii = [16, 14, 12][:n]
    ids = [3, 7, 12][:n]  # non-contiguous ids on purpose
    for pid, c, r in zip(ids, centres, radii):
        d = disc(shape, c, r) & (instances == 0)
        instances[d] = pid
        phases[d] = Phase.SOLID
    pores = (rng.random(shape) < 0.05) & (instances > 0)
    phases[pores] = Phase.PORE
    phases[centres[0][0], centres[0][1] - 10 : centres[0][1] + 10] = Phase.CRACK
    scale = 257 if dtype == np.uint16 else 1
    base = np.array([40, 180, 20, 10], np.float64)[phases] + rng.normal(0, 6, shape)
    pixels = (np.clip(base, 0, 255) * scale).astype(dtype)
    particles = []
    for k, pid in enumerate(ids):
        meas = measure_particle(instances == pid, phases, px)
        meas["sphere_diameter_um"] = math.nan if k == 0 else 9.5 + k
        particles.append(ParticleAnnotation(pid, CLASS_NAMES[k % 3], meas))
    return AnnotatedImage(
        image=SEMImage(pixels=pixels, pixel_size_um=px, pixel_size_source="synthetic"),
        stem=stem,
        instances=instances,
        phases=phases,
        particles=particles,
        meta={"seed": seed, "preset": "gp"},
    )


def relabel_map(a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """The bijection a-label → b-label if `a` and `b` are the same partition; else AssertionError."""
    assert a.shape == b.shape
    assert np.array_equal(a > 0, b > 0), "foregrounds differ"
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    assert pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg])), "labels split or merged"
    return {int(x): int(y) for x, y in pairs.T}


def classes_by_label(item: AnnotatedImage) -> dict[int, str | None]:
    return {p.particle_id: p.class_name for p in item.particles}


# ------------------------------------------------------------------ fracscope format


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_native_round_trip_is_exact(tmp_path, dtype):
    items = [make_item("a", dtype, seed=1), make_item("b_2", dtype, seed=2, n=2, px=0.0137891234)]
    json_path = write_dataset(tmp_path, (it for it in items), dataset_meta={"synth_version": "0.1", "n": 2})
    assert json_path == tmp_path / "annotations.json"
    assert detect_format(tmp_path) == "fracscope"
    back = read_dataset(tmp_path)
    assert [b.stem for b in back] == ["a", "b_2"]
    for orig, got in zip(items, back):
        assert got.image.pixels.dtype == dtype
        np.testing.assert_array_equal(got.image.pixels, orig.image.pixels)
        np.testing.assert_array_equal(got.instances, orig.instances)  # ids kept exactly
        np.testing.assert_array_equal(got.phases, orig.phases)
        assert got.image.pixel_size_um == orig.image.pixel_size_um
        assert classes_by_label(got) == classes_by_label(orig)
        for po, pg in zip(orig.particles, got.particles):
            assert po.measurements.keys() == pg.measurements.keys()
            for k, v in po.measurements.items():
                assert (math.isnan(v) and math.isnan(pg.measurements[k])) or pg.measurements[k] == v, k
        assert got.meta["seed"] == orig.meta["seed"]
        assert got.meta["dataset"]["synth_version"] == "0.1"
    # The ImageJ resolution alone also carries the pixel size.
    with tifffile.TiffFile(tmp_path / "images" / "b_2.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "um"
    coco = json.loads(json_path.read_text())
    assert coco["info"]["format"] == "fracscope"
    ann = coco["annotations"][0]
    assert isinstance(ann["segmentation"]["counts"], str) and ann["particle_id"] == 3 and ann["iscrowd"] == 0
    assert ann["sphere_diameter_um"] is None  # NaN stored as null (strict json)
    # The standard COCO reading of the same json sees the same masks.
    as_coco = read_dataset(json_path, format="coco")
    relabel_map(as_coco[0].instances, items[0].instances)


def test_native_multipage_and_pixel_size_fallbacks(tmp_path):
    item = make_item("stack", np.uint16)
    item.image.pixels = np.stack([item.image.pixels, item.image.pixels // 2, item.image.pixels // 3])
    plain = AnnotatedImage(SEMImage(np.full((20, 30), 7, np.uint8), None), "nothing", particles=[
        ParticleAnnotation(1, "broken")])  # no instance map: classes survive, masks do not
    write_dataset(tmp_path, [item, plain])
    got, got_plain = read_dataset(tmp_path)
    assert got.image.pixels.shape == (3, 80, 112) and got.image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(got.image.pixels, item.image.pixels)
    assert got_plain.instances is None and got_plain.phases is None and got_plain.image.pixel_size_um is None
    assert classes_by_label(got_plain) == {1: "broken"}
    # Without the json pixel size, the ImageJ TIFF resolution gives it back.
    coco = json.loads((tmp_path / "annotations.json").read_text())
    coco["images"][0]["pixel_size_um"] = None
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    again = read_dataset(tmp_path)[0]
    assert again.image.pixel_size_source == "imagej"
    assert again.image.pixel_size_um == pytest.approx(0.0375, rel=1e-9)
    assert read_dataset(tmp_path, pixel_size_um=0.05)[0].image.pixel_size_um == 0.05


def test_native_rejects_duplicate_stems_and_missing_images(tmp_path):
    with pytest.raises(ValueError, match="duplicate stem"):
        write_dataset(tmp_path / "d", [make_item("x"), make_item("x")])
    write_dataset(tmp_path / "ok", [make_item("x")])
    (tmp_path / "ok" / "images" / "x.tif").unlink()
    with pytest.raises(FileNotFoundError, match="x.tif"):
        read_dataset(tmp_path / "ok")


# ------------------------------------------------------------------ plain COCO


@pytest.mark.parametrize("encoding", ["rle", "rle_uncompressed"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_coco_rle_round_trip(tmp_path, encoding, dtype):
    items = [make_item("img1", dtype, seed=3), make_item("img2", dtype, seed=4, n=2)]
    json_path = write_coco(tmp_path, items, encoding=encoding)
    counts = json.loads(json_path.read_text())["annotations"][0]["segmentation"]["counts"]
    assert isinstance(counts, str if encoding == "rle" else list)
    assert detect_format(tmp_path) == "coco"
    back = read_dataset(tmp_path)
    for orig, got in zip(items, back):
        mapping = relabel_map(orig.instances, got.instances)
        assert {mapping[k]: v for k, v in classes_by_label(orig).items()} == classes_by_label(got)
        assert got.phases is None
        assert got.image.pixel_size_um == orig.image.pixel_size_um and got.image.pixel_size_source == "coco"
        np.testing.assert_array_equal(got.image.pixels, orig.image.pixels)


def test_coco_polygons_match_masks(tmp_path):
    item = make_item("poly", seed=5)
    write_coco(tmp_path, [item], encoding="polygon")
    got = read_dataset(tmp_path / "annotations.json")[0]
    assert len(got.particles) == 3
    for p_orig, p_got in zip(item.particles, got.particles):
        a, b = item.instances == p_orig.particle_id, got.instances == p_got.particle_id
        iou = (a & b).sum() / (a | b).sum()
        assert iou > 0.85, (p_orig.particle_id, iou)
        assert p_got.class_name == p_orig.class_name


def test_coco_cvat_layout_spellings_and_crowd(tmp_path):
    """CVAT: annotations/instances_default.json beside images/, free-form category names, iscrowd=1 masks."""
    item = make_item("frame_000", seed=6)
    write_coco(tmp_path / "tmp", [item], encoding="rle_uncompressed")
    coco = json.loads((tmp_path / "tmp" / "annotations.json").read_text())
    coco["categories"] = [{"id": 1, "name": "Intact"}, {"id": 2, "name": "mildly damaged"}, {"id": 3, "name": "BROKEN"}]
    for a in coco["annotations"]:
        a["iscrowd"] = 1
    for im in coco["images"]:
        del im["pixel_size_um"]
    (tmp_path / "ds" / "annotations").mkdir(parents=True)
    shutil.copytree(tmp_path / "tmp" / "images", tmp_path / "ds" / "images")
    (tmp_path / "ds" / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    assert detect_format(tmp_path / "ds") == "coco"
    got = read_dataset(tmp_path / "ds")[0]
    mapping = relabel_map(item.instances, got.instances)
    assert {mapping[k]: v for k, v in classes_by_label(item).items()} == classes_by_label(got)
    # No json pixel size: the TIFF resolution (ImageJ) is used.
    assert got.image.pixel_size_um == pytest.approx(0.0375) and got.image.pixel_size_source == "tiff_resolution"


def test_coco_unknown_category_lists_valid_names(tmp_path):
    write_coco(tmp_path, [make_item("u")])
    coco = json.loads((tmp_path / "annotations.json").read_text())
    coco["categories"][1]["name"] = "half-broken"
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"half-broken.*mildly_damaged"):
        read_dataset(tmp_path)


def test_class_name_spellings():
    assert canonical_class_name("Mildly Damaged") == "mildly_damaged"
    assert canonical_class_name("mildly-damaged") == "mildly_damaged"
    assert canonical_class_name("mild") == "mildly_damaged"
    assert canonical_class_name(" INTACT ") == "intact"
    assert canonical_class_name("particle") is None
    with pytest.raises(ValueError, match="expected one of"):
        canonical_class_name("cat")


# ------------------------------------------------------------------ class folders


def _single(stem, cls, dtype, with_mask, seed):
    """A one-particle crop, as the synth 'crops' kind makes."""
    shape = (48, 52)
    inst = disc(shape, (24, 26), 15).astype(np.uint32)
    phases = inst.astype(np.uint8)
    phases[20:23, 20:24] = Phase.PORE
    pixels = (np.array([30, 200, 15, 5])[phases] * (257 if dtype == np.uint16 else 1)).astype(dtype)
    pixels = pixels + np.random.default_rng(seed).integers(0, 5, shape).astype(dtype)
    return AnnotatedImage(
        SEMImage(pixels, 0.02), stem, instances=inst if with_mask else None,
        phases=phases if with_mask else None, particles=[ParticleAnnotation(1, cls)],
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_class_folders_round_trip(tmp_path, dtype):
    items = [_single(f"c{i}", cls, dtype, with_mask=i != 1, seed=i) for i, cls in
             enumerate(["broken", "intact", "mildly_damaged", "intact"])]
    write_class_folders(tmp_path, items)
    assert detect_format(tmp_path) == "class_folders"
    back = {b.stem: b for b in read_dataset(tmp_path)}
    assert [b.particles[0].class_name for b in read_dataset(tmp_path)] == ["intact", "intact", "mildly_damaged", "broken"]
    for orig in items:
        got = back[orig.stem]
        assert got.particles[0].class_name == orig.particles[0].class_name
        np.testing.assert_array_equal(got.image.pixels, orig.image.pixels)
        assert got.image.pixels.dtype == dtype
        assert got.image.pixel_size_um == pytest.approx(0.02)
        assert got.meta["single_particle"]
        if orig.instances is None:
            assert got.instances is None and got.phases is None
        else:
            np.testing.assert_array_equal(got.instances, orig.instances)
            np.testing.assert_array_equal(got.phases, orig.phases)


def test_class_folders_cut_from_field_and_alias_folders(tmp_path):
    field = make_item("field", seed=7)
    write_class_folders(tmp_path, [field])
    back = read_dataset(tmp_path, format="class_folders")
    assert sorted(b.stem for b in back) == ["field_p12", "field_p3", "field_p7"]
    for b in back:
        pid = int(b.stem.split("_p")[1])
        assert b.particles[0].class_name == classes_by_label(field)[pid]
        assert b.instances.sum() == (field.instances == pid).sum()  # own mask only, neighbour excluded
    # Hand-made folders: other spellings, JPEG/PNG, masks/ sub-folder.
    import cv2

    hand = tmp_path / "hand"
    (hand / "Mildly Damaged" / "masks").mkdir(parents=True)
    img = np.full((20, 20), 100, np.uint8)
    cv2.imwrite(str(hand / "Mildly Damaged" / "p1.png"), img)
    cv2.imwrite(str(hand / "Mildly Damaged" / "masks" / "p1.png"), (disc((20, 20), (10, 10), 6) * 255).astype(np.uint8))
    got = read_dataset(hand)[0]
    assert got.particles[0].class_name == "mildly_damaged" and got.instances.sum() == disc((20, 20), (10, 10), 6).sum()
    assert got.image.pixel_size_um is None
    assert read_dataset(hand, pixel_size_um=0.1)[0].image.pixel_size_source == "override"


# ------------------------------------------------------------------ label image + CSV


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_csv_round_trip(tmp_path, dtype):
    items = [make_item("007", dtype, seed=8), make_item("s2", dtype, seed=9, n=2)]
    items[1].particles[1].class_name = None  # unlabelled particle stays unlabelled
    csv_path = write_label_csv(tmp_path, items)
    assert csv_path.name == "labels.csv"
    assert detect_format(tmp_path) == "label_csv"
    back = {b.stem: b for b in read_dataset(tmp_path)}
    assert set(back) == {"007", "s2"}  # "007" stays text
    for orig in items:
        got = back[orig.stem]
        np.testing.assert_array_equal(got.instances, orig.instances)
        np.testing.assert_array_equal(got.phases, orig.phases)
        assert classes_by_label(got) == classes_by_label(orig)
        assert got.image.pixel_size_um == pytest.approx(orig.image.pixel_size_um)
        p0 = got.particles[0]
        assert p0.measurements["porosity_pct"] == pytest.approx(orig.particles[0].measurements["porosity_pct"])


def test_label_csv_per_image_csv_and_errors(tmp_path):
    item = make_item("img", seed=10)
    write_label_csv(tmp_path, [item])
    (tmp_path / "labels.csv").unlink()
    (tmp_path / "img.csv").write_text("Label,Class\n3,Intact\n12,broken\n")
    got = read_dataset(tmp_path)[0]
    assert classes_by_label(got) == {3: "intact", 7: None, 12: "broken"}
    (tmp_path / "img.csv").write_text("label,class\n3,intact\n99,broken\n")
    with pytest.raises(ValueError, match=r"labels \[99\] are not in the label image"):
        read_dataset(tmp_path)
    (tmp_path / "img.csv").write_text("label,class\n3,shattered\n")
    with pytest.raises(ValueError, match="shattered"):
        read_dataset(tmp_path)
    (tmp_path / "img.csv").unlink()
    (tmp_path / "all.csv").write_text("image,label,class\nother.tif,3,intact\n")
    with pytest.raises(ValueError, match="other"):
        read_dataset(tmp_path)


# ------------------------------------------------------------------ detection


def test_detect_format_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "nope")
    (tmp_path / "random.txt").write_text("hello")
    with pytest.raises(ValueError, match="class_folders"):
        detect_format(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset(tmp_path, format="voc")


def test_rle_decoder_matches_pycocotools():
    from pycocotools import mask as mask_utils

    from fracscope.data.formats.coco import segmentation_to_local

    rng = np.random.default_rng(11)
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        local, (r0, c0) = segmentation_to_local({"size": [h, w], "counts": rle["counts"].decode()}, h, w)
        full = np.zeros((h, w), bool)
        full[r0 : r0 + local.shape[0], c0 : c0 + local.shape[1]] = local
        np.testing.assert_array_equal(full, m)
    with pytest.raises(ValueError, match="sum to"):
        segmentation_to_local({"size": [4, 4], "counts": [3, 2]}, 4, 4)
