"""The dense phase model: its model-file kind (`PhaseMetadata`), export, and tiled inference on the image grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fracscope.detect.learned import normalise_image
from fracscope.detect.tiling import TileGrid
from fracscope.model_file import (
    DetectorMetadata,
    MetadataError,
    ModelMetadata,
    PhaseMetadata,
    checkpoint_kind,
    read_metadata,
)
from fracscope.phase_map import probabilities_to_grid
from fracscope.types import Phase

DESCRIBE = {  # what PhaseDataModule.describe() writes, plus best_metrics (PhaseModule.on_save_checkpoint)
    "task": "phase_map", "working_pixel_size_um": 0.05, "tile_px": 256, "in_channels": 1,
    "normalisation": {"method": "percentile", "low_pct": 1.0, "high_pct": 99.0, "over": "whole image"},
    "pixel_size_range_um": [0.035, 0.08], "synth_version": "7", "phase_fractions": [0.5, 0.4, 0.07, 0.03],
    "training_data": "synthetic (test)", "augment": {"enabled": True}, "split_seed": 0,
    "best_metrics": {"val/miou": 0.6, "val/crack_iou": 0.5},
}


def field_image(rows: int, cols: int, seed: int) -> np.ndarray:
    """A grey field: bright discs on a dark matrix, dark pores and a 2-px crack in each, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    img = np.full((rows, cols), 40.0)
    for _ in range(max(1, rows * cols // 50_000)):
        cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(40, 120)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        img[disc] = 180
        for _ in range(5):
            py, px = cy + rng.uniform(-0.6, 0.6) * r, cx + rng.uniform(-0.6, 0.6) * r
            img[disc & ((yy - py) ** 2 + (xx - px) ** 2 < (0.08 * r) ** 2)] = 20
        ang = rng.uniform(0, np.pi)
        img[disc & (np.abs((yy - cy) * np.cos(ang) - (xx - cx) * np.sin(ang)) < 1.0)] = 10
    return img + rng.normal(0, 10, (rows, cols))


# ------------------------------------------------------------------------------ the model-file kind


def test_phase_metadata_round_trips_and_is_its_own_kind():
    meta = PhaseMetadata(working_pixel_size_um=0.04, tile_px=384, overlap_px=96, encoder="mobilenet_v3_small",
                         pixel_size_range_um=(0.035, 0.08), class_rule={"crack_px_min": 3}, metrics={"val/miou": 0.6})
    assert PhaseMetadata.from_json(meta.to_json()) == meta
    assert PhaseMetadata.from_json(meta.to_json()[:-1] + ', "newer_field": 1}').extra == {"newer_field": 1}
    assert (meta.KIND, meta.METADATA_KEY, meta.INPUT_NAME, meta.OUTPUT_NAMES) == (
        "phases", "fracscope_phases", "image", ("phase_probs",))
    assert len({k.METADATA_KEY for k in (ModelMetadata, DetectorMetadata, PhaseMetadata)}) == 3
    defaults = PhaseMetadata()
    assert (defaults.working_pixel_size_um, defaults.tile_px, defaults.overlap_px, defaults.class_rule) == (
        0.05, 512, 64, {})
    for bad in ({"tile_px": 500}, {"overlap_px": 48}, {"overlap_px": 512}, {"precision": "fp16"},
                {"normalisation": {"method": "zscore"}}, {"phase_names": ("a", "b")}, {"schema_version": 99}):
        with pytest.raises(MetadataError):
            dataclasses.replace(defaults, **bad)


def test_from_hparams_reads_what_phase_training_writes():
    hp = {"net": {"encoder": "mobilenet_v3_small", "in_channels": 1, "num_phases": 4, "channels_last": True},
          "loss": {"ce_weight": 1.0}, "config": DESCRIBE}
    assert checkpoint_kind(hp) is PhaseMetadata
    assert checkpoint_kind({"net": {}, "config": {}, "postprocess": {}}) is DetectorMetadata
    assert checkpoint_kind({"net": {}, "config": {"crop_size": 64}}) is ModelMetadata
    meta = PhaseMetadata.from_hparams(hp)
    assert meta.percentiles == (1.0, 99.0) and meta.working_pixel_size_um == 0.05
    assert meta.pixel_size_range_um == (0.035, 0.08) and meta.encoder == "mobilenet_v3_small"
    assert meta.metrics == {"val/miou": 0.6, "val/crack_iou": 0.5} and meta.synth_version == "7"
    # The training tile is provenance, not the inference tile.
    assert meta.tile_px == 512 and meta.extra["training_tile_px"] == 256
    assert meta.extra["phase_fractions"] == [0.5, 0.4, 0.07, 0.03] and meta.extra["loss"] == {"ce_weight": 1.0}
    assert meta.pore_polarities == ("dark",)  # a checkpoint from before the key: dark pores only
    looks = PhaseMetadata.from_hparams({**hp, "config": {**DESCRIBE, "pore_polarities": ["dark", "bright"]}})
    assert looks.pore_polarities == ("dark", "bright")
    with pytest.raises(MetadataError, match="3 phase outputs"):
        PhaseMetadata.from_hparams({**hp, "net": {**hp["net"], "num_phases": 3}})


def test_missing_shipped_phase_model_is_one_clear_line(monkeypatch, tmp_path):
    from fracscope import assets

    monkeypatch.setattr(assets, "DEFAULT_PHASE_MODEL", tmp_path / "fracscope_phases.onnx")
    with pytest.raises(FileNotFoundError, match="shipped dense phase model is missing"):
        assets.resolve_phase_model(None)
    assert assets.resolve_phase_model("x.onnx") == "x.onnx"


# ------------------------------------------------------------------------------ back to the image grid


def test_crack_one_working_px_wide_survives_the_shrink_to_the_image_grid():
    # Working px finer than image px (0.05 vs 0.08 um): 160 working px -> 100 image px.
    rows, cols = 100, 100
    probs = np.zeros((4, 160, 160), np.float32)
    probs[Phase.SOLID], probs[Phase.CRACK], probs[Phase.PORE], probs[Phase.BACKGROUND] = 0.97, 0.01, 0.01, 0.01
    crack_cols = [10, 27, 41, 58, 81, 100, 119, 142]  # at seven different offsets within an image px
    for c in crack_cols:
        probs[:, :, c] = np.array([0.03, 0.04, 0.03, 0.9], np.float32)[:, None]
    out = probabilities_to_grid(probs, (rows, cols), crack_index=Phase.CRACK)
    assert out.shape == (4, rows, cols) and np.allclose(out.sum(0), 1.0, atol=1e-5)
    codes = out.argmax(0)
    for c in crack_cols:  # a crack pixel in every row, in an image column whose footprint holds the crack
        lo, hi = int(np.floor(c / 1.6)), int(np.ceil((c + 1) / 1.6))
        assert (codes[:, lo:hi] == Phase.CRACK).any(axis=1).all(), c
    assert (codes == Phase.CRACK).sum() <= 2 * rows * len(crack_cols)  # no more than the footprints
    # Plain area averaging loses some of them: the max is what keeps them.
    import cv2

    area = np.stack([cv2.resize(p, (cols, rows), interpolation=cv2.INTER_AREA) for p in probs]).argmax(0)
    assert sum(not (area[:, int(c / 1.6) : int(np.ceil((c + 1) / 1.6))] == Phase.CRACK).any() for c in crack_cols) > 0


def test_enlarging_is_bilinear_and_keeps_probabilities():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=(30, 40)).transpose(2, 0, 1).astype(np.float32)
    out = probabilities_to_grid(probs, (50, 67), crack_index=3)
    assert out.shape == (4, 50, 67) and np.allclose(out.sum(0), 1.0, atol=1e-5)
    assert probabilities_to_grid(probs, (30, 40), crack_index=3) is probs


# ------------------------------------------------------------------------------ exported networks (torch)


def _local_net():
    """A 2-layer conv net (receptive field 5 px): tiling with overlap >= 4 px must change nothing."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        net[0].weight.mul_(8.0)
    return net.eval()


def _active_phase_net(encoder: str):
    """A random tiny `PhaseNet` whose BatchNorm statistics are measured on field images, so its
    output varies over the image (with the initial statistics it is nearly constant)."""
    import torch

    from fracscope.models.phase_net import PhaseNet, PhaseNetConfig

    torch.manual_seed(0)
    net = PhaseNet(PhaseNetConfig(encoder=encoder, decoder_channels=(16, 16, 8, 8, 8)))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch below
    x = np.stack([normalise_image(field_image(256, 256, s)) for s in range(4)])[:, None]
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(x.astype(np.float32)))
    return net.eval()


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    from fracscope.export import export_phases

    path = tmp_path_factory.mktemp("phases") / "local.onnx"
    export_phases(_local_net(), path, PhaseMetadata(training_data="untrained (test)"))
    return path


@pytest.mark.train
def test_tiles_put_together_equal_one_pass_for_a_local_network(local_model):
    from fracscope.phase_map import PhaseMapModel

    img = field_image(700, 900, 7)
    one = PhaseMapModel(local_model, threads=1, tile_px=1024, overlap_px=0).predict(img, 0.05)
    tiled = PhaseMapModel(local_model, threads=1, tile_px=256, overlap_px=64)
    assert len(TileGrid((22, 29), 8, 2)) == 20  # 700 x 900 px in 32-px blocks: 4 x 5 tiles
    probs = tiled.predict(img, 0.05)
    assert len(np.unique(one.argmax(0))) >= 2  # the network's output varies over the image
    assert np.abs(probs - one).max() < 1e-5
    np.testing.assert_array_equal(tiled.predict_codes(img, 0.05).best, one.argmax(0))


@pytest.mark.train
@pytest.mark.parametrize("pixel_size_um", [0.03, 0.05, 0.08])
def test_output_is_on_the_image_grid(local_model, pixel_size_um):
    from fracscope.phase_map import PhaseMapModel

    img = field_image(300, 410, 3)
    probs = PhaseMapModel(local_model, threads=1, tile_px=256, overlap_px=64).predict(img, pixel_size_um)
    assert probs.shape == (4, 300, 410) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-4)


@pytest.mark.train
def test_onnx_phase_probabilities_match_pytorch(tmp_path):
    import torch

    from fracscope.export import export_phases
    from fracscope.models.phase_net import PhaseProbabilities
    from fracscope.phase_map import PhaseMapModel

    net = _active_phase_net("mobilenet_v3_small")
    report = export_phases(net, tmp_path / "p.onnx", PhaseMetadata(encoder="mobilenet_v3_small"))
    assert report.max_abs_diff <= 1e-4 and report.precision == "fp32" and len(report.sha256) == 64
    work = normalise_image(field_image(192, 320, 5))
    got = PhaseMapModel(tmp_path / "p.onnx", threads=1).predict_working(work)
    with torch.inference_mode():
        ref = PhaseProbabilities(net)(torch.from_numpy(work[None, None].astype(np.float32)))[0].numpy()
    assert np.abs(got - ref).max() < 1e-4
    assert len(np.unique(ref.argmax(0))) >= 2
    with pytest.raises(MetadataError, match="no 'fracscope_detector' metadata"):
        read_metadata(tmp_path / "p.onnx", DetectorMetadata)


@pytest.mark.train
@pytest.mark.slow  # ~100 s on the busy 2-core machine: resnet18 at 700 x 900 px, three times
def test_tiled_phase_net_agrees_with_one_pass(tmp_path):
    """A U-Net's receptive field is wider than any overlap: tiles are close to one pass, not equal.

    Measured on this random resnet18 PhaseNet, 700 x 900 px: argmax agreement 98.6 % (tile 256,
    overlap 64), 99.78 % (512 / 64), 99.96 % (512 / 128); since the tile side is chosen per image
    (`cheapest_grid`: 544 px for 512 / 128 here), 99.85 % for 512 / 128. MobileNet-V3 encoders (the default) also
    have squeeze-and-excitation blocks that average each channel over the whole tile, so their
    tiles differ from one pass everywhere, not just near the seams (random net: 67 % at 256 / 64,
    80 % at 512 / 128); there only the trained model can say how much it matters.
    """
    from fracscope.export import export_phases
    from fracscope.phase_map import PhaseMapModel

    path = tmp_path / "r.onnx"
    export_phases(_active_phase_net("resnet18"), path, PhaseMetadata(encoder="resnet18"), max_abs_diff=1e-3)
    img = field_image(700, 900, 7)
    one = PhaseMapModel(path, threads=1, tile_px=1024, overlap_px=0).predict(img, 0.05)
    assert len(np.unique(one.argmax(0))) >= 3
    for tile, overlap, floor in ((256, 64, 98.0), (512, 128, 99.8)):
        probs = PhaseMapModel(path, threads=1, tile_px=tile, overlap_px=overlap).predict(img, 0.05)
        assert 100.0 * np.mean(probs.argmax(0) == one.argmax(0)) >= floor, (tile, overlap)


@pytest.mark.train
def test_phase_checkpoint_exports_through_the_one_cli(tmp_path, capsys):
    import lightning as L
    import torch

    from fracscope.export.cli import main
    from fracscope.models.checkpoint import load_network
    from fracscope.models.phase_module import PhaseModule
    from fracscope.models.phase_net import PhaseNet
    from fracscope.phase_map import PhaseMapModel

    torch.manual_seed(0)
    config = {k: v for k, v in DESCRIBE.items() if k != "best_metrics"}
    module = PhaseModule({"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8], "channels_last": False},
                         config=config)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.strategy.connect(module)
    ckpt = tmp_path / "phases.ckpt"
    trainer.save_checkpoint(ckpt)
    network, meta = load_network(ckpt)
    assert isinstance(network, PhaseNet) and isinstance(meta, PhaseMetadata)
    with pytest.raises(ValueError, match="phases checkpoint"):
        load_network(ckpt, DetectorMetadata)
    out = tmp_path / "phases.onnx"
    assert main([str(ckpt), str(out)]) == 0
    assert "fp32 parity" in capsys.readouterr().out
    stored = read_metadata(out, PhaseMetadata)
    assert stored.precision == "fp32" and stored.percentiles == (1.0, 99.0) and stored.encoder == "resnet18"
    assert stored.extra["training_tile_px"] == 256 and stored.fracscope_version
    assert PhaseMapModel(out, threads=1).predict(field_image(100, 130, 1), 0.06).shape == (4, 100, 130)
    with pytest.raises(SystemExit) as err:
        main([str(ckpt), str(tmp_path / "x.onnx"), "--pore-weight", "1.2"])
    assert err.value.code == 2 and not (tmp_path / "x.onnx").exists()


@pytest.mark.train
def test_int8_phase_export_reports_argmax_agreement(tmp_path):
    from fracscope.export import export_phases

    tiles = np.stack([normalise_image(field_image(128, 128, s)) for s in range(8)])[:, None].astype(np.float32)
    report = export_phases(_local_net(), tmp_path / "q.onnx", PhaseMetadata(), quantize=True, calibration=tiles)
    assert report.precision == "int8" and read_metadata(report.path, PhaseMetadata).precision == "int8"
    assert report.phase_agreement_pct >= 90.0


def test_the_shipped_model_tiled_agrees_with_one_pass_on_a_sample_field():
    """The trained network is calm: its default 512/64 tiles give the phase codes of one whole-image pass on
    >= 99.9 % of the pixels (measured 99.98 %); squeeze-excitation pooling keeps it from being exact."""
    from fracscope.assets import SAMPLE_DIR
    from fracscope.io.read import load_file
    from fracscope.phase_map import PhaseMapModel

    image = load_file(SAMPLE_DIR / "GP-NCM_100cyc" / "field_00.tif")[0]
    tiled = PhaseMapModel(None).predict(image.pixels, image.pixel_size_um).argmax(0)
    whole = PhaseMapModel(None, tile_px=2048, overlap_px=0).predict(image.pixels, image.pixel_size_um).argmax(0)
    assert tiled.shape == image.pixels.shape
    assert (tiled == whole).mean() >= 0.999


@pytest.mark.train
def test_phases_smoke_trains_through_hydra_and_exports(tmp_path, synth_cache) -> None:
    """`train.py experiment=phases_smoke`: the phase model's data, LightningModule and checkpoint go through the
    one training path, and the checkpoint exports to a phase model file that `PhaseMapModel` opens."""
    from hydra import compose, initialize_config_dir

    from fracscope.assets import CONF_DIR
    from fracscope.export import export_checkpoint
    from fracscope.model_file import read_metadata
    from fracscope.models.train import run
    from fracscope.phase_map import PhaseMapModel

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=phases_smoke", f"paths.output_dir={tmp_path}", "threads=2",
                                          "logger=csv"])
    assert cfg.model._target_.endswith("PhaseModule") and cfg.callbacks.model_checkpoint.monitor == "val/miou"
    result = run(cfg)
    assert {"val/loss", "train/loss"} <= set(result.final_metrics)
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert list(synth_cache.glob("phases-*/fields.npz"))  # the prepared fields are cached
    out = tmp_path / "phases.onnx"
    export_checkpoint(result.best_checkpoint, out)
    meta = read_metadata(out, PhaseMetadata)
    assert meta.working_pixel_size_um == 0.05 and meta.encoder == "mobilenet_v3_small"
    probs = PhaseMapModel(out).predict(np.zeros((70, 90), np.uint8), 0.05)
    assert probs.shape == (4, 70, 90) and np.allclose(probs.sum(0), 1.0, atol=1e-4)


def test_an_8_bit_image_is_normalised_as_its_float_copy():
    """The 8-bit fast path of the percentiles (the histogram) gives the maps of the float path."""
    from fracscope.phase_map import PhaseMapModel

    img = np.round(field_image(256, 320, 5) * 255).astype(np.uint8)
    model = PhaseMapModel(None, threads=1)
    fast = model.predict(img, 0.05)
    slow = model.predict(img.astype(np.float32), 0.05)
    np.testing.assert_array_equal(fast, slow)
    enlarged = model.predict(img, 0.07)  # resampled: the percentiles come from the working image either way
    np.testing.assert_array_equal(enlarged, model.predict(img.astype(np.float32), 0.07))


def test_cheapest_grid_computes_no_more_than_the_files_tile_and_stays_in_range():
    from fracscope.phase_map import TILE_STEPS_ABOVE, cheapest_grid

    def computed(g):
        return sum((b.bbox[2] - b.bbox[0]) * (b.bbox[3] - b.bbox[1]) for b in g)

    for shape in [(48, 64), (24, 32), (48, 48), (32, 32), (72, 96), (5, 7)]:
        g = cheapest_grid(shape, 16, 2)
        assert 16 <= g.tile <= 16 + TILE_STEPS_ABOVE
        assert computed(g) == min(computed(TileGrid(shape, t, 2)) for t in range(16, 16 + TILE_STEPS_ABOVE + 1))
        assert computed(g) <= computed(TileGrid(shape, 16, 2))
        covered = np.zeros(shape, int)
        for b in g:
            covered[b.core[0]:b.core[2], b.core[1]:b.core[3]] += 1
        assert (covered == 1).all()  # the cores still partition the image
    assert cheapest_grid((48, 64), 16, 2).tile == 18  # a 2048 x 1536 field: 576-px tiles, 12 instead of 20
