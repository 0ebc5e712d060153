"""The data module: every dataset format gives batches equal to its annotation; augmentation."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from fracscope.crop import CropSpec, crop_particle
from fracscope.data import read_dataset, write_dataset
from fracscope.data.augment import AugmentSpec, CropAugmenter, invert_pores, perturb_mask
from fracscope.data.datamodule import ParticleDataModule, SynthSpec, split_indices
from fracscope.types import CLASS_NAMES, Phase

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)

torch.set_num_threads(2)
SIZE = 64


@pytest.fixture(scope="module")
def items():
    from fracscope.synth import generate_crops, load_config

    cfg = load_config("gp", ["crops.pixel_size_um=[0.08,0.08]", "damage=[0.34,0.33,0.33]"])
    return list(generate_crops(cfg, 4, seed=5))


def _module(path, **loader) -> ParticleDataModule:
    dm = ParticleDataModule(path=str(path), crop={"size": SIZE}, augment={"enabled": False},
                            loader={"val_fraction": 0.0, "batch_size": 16, **loader})
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("fmt", ["fracscope", "coco", "class_folders", "label_csv"])
def test_batch_equals_source_annotation(tmp_path, items, fmt: str) -> None:
    write_dataset(tmp_path / fmt, items, format=fmt)
    dm = _module(tmp_path / fmt)
    batch = next(iter(dm.val_dataloader()))
    read = read_dataset(tmp_path / fmt)
    source = {it.stem: it for it in items}
    assert len(batch["label"]) == len(items)
    for k, g in enumerate(dm.arrays.group[dm.val_idx]):
        item = read[g]
        src = next(v for s, v in source.items() if item.stem.startswith(s))
        assert CLASS_NAMES[int(batch["label"][k])] == src.particles[0].class_name
        inst = item.instances if item.instances is not None else None
        pid = item.particles[0].particle_id
        want = crop_particle(item.image.pixels, inst, pid, CropSpec(SIZE, 0.15), item.phases)
        np.testing.assert_array_equal(batch["mask"][k].numpy(), want.mask.astype(np.uint8))
        np.testing.assert_array_equal(batch["x"][k, 1].numpy(), want.mask)
        np.testing.assert_allclose(batch["x"][k, 0].numpy(), want.image, atol=2e-3)  # float16 storage
        if item.phases is None:
            assert (batch["phases"][k] == 255).all()
        else:
            np.testing.assert_array_equal(batch["phases"][k].numpy(), want.phases)
        # The annotation itself survived the format: same particle area as the source.
        assert int((inst == pid).sum()) == int((src.instances == 1).sum())


def test_class_folders_without_masks_use_the_detector(tmp_path, items) -> None:
    root = tmp_path / "cf"
    write_dataset(root, items, format="class_folders")
    for f in list(root.rglob("*_mask.png")) + list(root.rglob("*_phases.png")):
        f.unlink()
    dm = _module(root)
    a = dm.arrays
    assert (a.phases == 255).all()  # no phase masks: the phase loss is masked out
    for k, g in enumerate(a.group):
        src = items[k]
        want = crop_particle(src.image.pixels, src.instances, 1, CropSpec(SIZE, 0.15)).mask > 0
        got = a.mask[k] > 0
        iou = (want & got).sum() / (want | got).sum()
        assert iou > 0.6, iou


def test_synthetic_default_is_cached_by_config_hash(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FRACSCOPE_CACHE", str(tmp_path))
    spec = {"presets": ["p"], "n_crops": 5, "n_field_particles": 4, "field_px": [256, 256],
            "field_pixel_sizes_um": [0.1]}
    dm = ParticleDataModule(synth=spec, crop={"size": SIZE}, loader={"val_fraction": 0.34})
    dm.setup()
    root = dm.synth_dir()
    assert (root / "annotations.json").exists() and list(root.glob("crops-*.npz"))
    assert len(dm.train_idx) + len(dm.val_idx) == len(dm.arrays)
    assert not set(dm.arrays.group[dm.train_idx]) & set(dm.arrays.group[dm.val_idx])
    px = dm.arrays.pixel_size_um
    assert px.min() >= 0.03 and px.max() <= 0.15  # wide-field pixel sizes
    other = SynthSpec(presets=("p",), n_crops=4)
    assert other.key() != dm.synth.key()
    randomized = SynthSpec(**{**dm.synth.__dict__, "imaging_ranges": {"noise_sd": (0.01, 0.05)}})
    assert randomized.key() != dm.synth.key()
    assert all(cfg.imaging.randomize == {"noise_sd": (0.01, 0.05)} for _, cfg, _ in randomized.jobs())
    assert "imaging drawn per image" in randomized.describe()
    dm2 = ParticleDataModule(synth=spec, crop={"size": SIZE})
    dm2.setup()  # from the cache: identical arrays
    np.testing.assert_array_equal(dm2.arrays.image, dm.arrays.image)
    facts = dm.describe()
    assert facts["crop_size"] == SIZE and facts["synth_version"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape[1:] == (2, SIZE, SIZE)


def test_split_is_seeded_and_by_group() -> None:
    groups = np.repeat(np.arange(10), 3)
    a = split_indices(groups, 0.2, seed=1)
    b = split_indices(groups, 0.2, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not set(groups[a[0]]) & set(groups[a[1]])


def _crop_with_pores(size: int = SIZE):
    img = np.full((size, size), 0.1, np.float32)
    phases = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    phases[disc] = Phase.SOLID
    img[disc] = 0.65
    phases[30:33, 20:23] = Phase.PORE
    img[30:33, 20:23] = 0.05
    return img, disc.astype(np.uint8), phases


def test_geometry_moves_image_and_masks_together() -> None:
    img, mask, phases = _crop_with_pores()
    spec = AugmentSpec(brightness_contrast_p=0, gamma_p=0, noise_p=0, blur_p=0, curtain_p=0, invert_pores_p=0,
                       mask_perturb_p=0)
    aug = CropAugmenter(spec, seed=0)
    for _ in range(10):
        out_img, in_mask, true_mask, out_ph = aug(img, mask, phases)
        assert np.array_equal(in_mask, true_mask)
        pore = out_ph == Phase.PORE
        if pore.any():
            assert out_img[pore].mean() < 0.3  # pores still dark where the phases say pore
        solid = out_ph == Phase.SOLID
        assert abs(out_img[solid].mean() - 0.65) < 0.1
        assert set(np.unique(out_ph)) <= {0, 1, 2, 255}


def test_inverted_pores_are_bright_and_mask_perturbation_is_small() -> None:
    img, mask, phases = _crop_with_pores()
    rng = np.random.default_rng(0)
    bright = invert_pores(img, phases, rng, include_cracks=True)
    assert bright[31, 21] > img[phases == Phase.SOLID].mean() + 0.1
    assert np.allclose(bright[phases == Phase.BACKGROUND][:50], img[phases == Phase.BACKGROUND][:50], atol=0.05)
    for _ in range(10):
        m = perturb_mask(mask, rng, 3)
        changed = int((m != mask).sum())
        assert 0 <= changed < 0.35 * mask.sum()
    full = CropAugmenter(AugmentSpec(), seed=1)
    out = full(img, mask, phases)
    assert out[0].dtype == np.float32 and out[0].min() >= 0 and out[0].max() <= 1


def test_parallel_generation_gives_the_same_images_as_sequential() -> None:
    spec = SynthSpec(presets=("gp",), n_crops=3, n_field_particles=4, field_pixel_sizes_um=(0.12,),
                     field_px=(192, 192), seed=3)
    one = list(SynthSpec(**{**spec.__dict__, "workers": 1}).generate())
    two = list(SynthSpec(**{**spec.__dict__, "workers": 2}).generate())
    assert [i.stem for i in one] == [i.stem for i in two] and len(one) >= 4
    for a, b in zip(one, two):
        assert np.array_equal(a.image.pixels, b.image.pixels)
        assert np.array_equal(a.instances, b.instances) and np.array_equal(a.phases, b.phases)
    assert spec.key() == SynthSpec(**{**spec.__dict__, "workers": 2}).key()
