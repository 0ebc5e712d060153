"""The learned particle detector: network shapes, training through train.py, export, inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from fracscope.detect import build_detector, maps_from_labels
from fracscope.detect.learned import LearnedDetector, resize_nearest
from fracscope.export import ExportParityError, export_detector, parity_inputs
from fracscope.model_file import DetectorMetadata, read_metadata
from fracscope.models.checkpoint import load_network
from fracscope.models.detector_net import DetectorNet, DetectorNetConfig, DetectorProbabilities
from fracscope.types import SEMImage

pytestmark = pytest.mark.train  # the whole module needs the training stack (torch)

REPO = Path(__file__).resolve().parents[1]
TINY = DetectorNetConfig(encoder="resnet18", decoder_channels=(16, 16, 8, 8, 8))

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """An untrained tiny detector exported with metadata (plumbing only)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("det") / "detector.onnx"
    meta = DetectorMetadata(encoder="resnet18", training_data="untrained (test)",
                            postprocess={"foreground_threshold": 0.45, "min_area_px": 10})
    export_detector(DetectorNet(TINY).eval(), path, meta)
    return path


def _field(px_um: float = 0.1, shape: tuple[int, int] = (300, 420)):
    from fracscope.synth import load_config, make_field

    cfg = load_config("gp", [f"electrode.pixel_size_um={px_um}", f"electrode.field_px=[{shape[0]},{shape[1]}]"])
    return make_field(cfg, 0, 0)


def test_net_shapes_and_ranges() -> None:
    net = DetectorNet(TINY).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 96))
        fg, dist = DetectorProbabilities(net)(torch.rand(1, 1, 32, 160))
    assert out.shape == (2, 2, 64, 96)
    assert float(out[:, 1].min()) >= 0 and float(out[:, 1].max()) <= 1  # distance is a sigmoid
    assert fg.shape == dist.shape == (1, 1, 32, 160)
    assert 0 <= float(fg.min()) and float(fg.max()) <= 1


def test_loss_prefers_the_right_maps() -> None:
    from fracscope.models.detector_module import DetectorModule

    module = DetectorModule(net={**TINY.to_dict(), "channels_last": False})
    inst = np.zeros((64, 64), np.int32)
    inst[8:30, 8:30] = 1
    inst[30:60, 20:56] = 2
    fg, dist = maps_from_labels(inst)
    batch = {"foreground": torch.from_numpy(fg)[None], "distance": torch.from_numpy(dist)[None]}
    good = torch.stack([torch.from_numpy(fg * 20 - 10), torch.from_numpy(dist)])[None]
    bad = torch.stack([torch.from_numpy(10 - fg * 20), torch.from_numpy(1 - dist)])[None]
    lg, lb = module.compute_loss(batch, good), module.compute_loss(batch, bad)
    assert float(lg["loss"]) < 0.01 < 1.0 < float(lb["loss"])
    assert float(lg["dist_l1"]) == 0.0


def test_fast_dev_run_through_train_and_export_checkpoint(tmp_path, synth_cache) -> None:
    from fracscope.models.train import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=detector_smoke", f"paths.output_dir={tmp_path}", "threads=2",
                                          "trainer.max_epochs=1", "logger=csv"])
    assert cfg.model._target_.endswith("DetectorModule") and cfg.callbacks.model_checkpoint.monitor == "val/ap50"
    result = run(cfg)
    assert {"val/loss", "val/fg_iou", "val/ap50", "train/loss", "train/fg_iou"} <= set(result.final_metrics)
    assert 0.0 <= result.final_metrics["val/ap50"] <= 1.0
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert list(synth_cache.glob("detector-*/fields.npz"))  # the prepared fields are cached

    net, meta = load_network(result.best_checkpoint, DetectorMetadata)
    assert meta.working_pixel_size_um == 0.15 and meta.encoder == "resnet18"
    assert meta.normalisation["method"] == "percentile" and "val/ap50" in meta.metrics
    report = export_detector(net, tmp_path / "det.onnx", meta)
    assert read_metadata(report.path, DetectorMetadata).postprocess == meta.postprocess


def test_export_parity_on_two_sizes(tiny_onnx) -> None:
    import onnxruntime as ort

    meta = read_metadata(tiny_onnx, DetectorMetadata)
    assert meta.postprocess["foreground_threshold"] == 0.45 and meta.fracscope_version
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    torch.manual_seed(0)
    net = DetectorProbabilities(DetectorNet(TINY).eval())  # same seed: same weights as the export
    for x in parity_inputs(((1, 64, 224), (3, 128, 32))):
        fg, dist = sess.run(None, {"image": x})
        with torch.no_grad():
            tfg, tdist = net(torch.from_numpy(x))
        assert fg.shape == dist.shape == (x.shape[0], 1, *x.shape[2:])
        assert np.abs(fg - tfg.numpy()).max() < 1e-4 and np.abs(dist - tdist.numpy()).max() < 1e-4


@pytest.mark.filterwarnings("ignore::fracscope.detect.tiling.OversizedObjectWarning")  # untrained: one big blob
def test_learned_detector_end_to_end(tiny_onnx) -> None:
    item = _field()
    det = LearnedDetector(tiny_onnx, threads=1, postprocess={"foreground_threshold": 0.3})
    res = det.detect_with_scores(item.image)
    labels = res.labels
    assert labels.shape == item.image.pixels.shape and labels.dtype == np.uint32
    ids = np.unique(labels)
    assert np.array_equal(ids[ids > 0], np.arange(1, int(labels.max()) + 1))  # consecutive 1..N
    assert len(res.scores) == labels.max() and np.all((res.scores >= 0) & (res.scores <= 1))
    assert res.foreground_prob.shape == (200, 280)  # 0.1 -> 0.15 um/px, not padded
    # Wrapped in a TiledDetector (12 tiles here) it still returns one valid label map.
    from fracscope.detect import TiledDetector

    tiled = TiledDetector(LearnedDetector(tiny_onnx, threads=1), tile_px=160, overlap_px=64).detect(item.image)
    assert tiled.shape == labels.shape and tiled.dtype == np.uint32
    ids = np.unique(tiled)
    assert np.array_equal(ids[ids > 0], np.arange(1, int(tiled.max()) + 1))


def test_build_from_config(tiny_onnx) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "detect" / "learned.yaml")
    cfg.model_path = str(tiny_onnx)
    det = build_detector(cfg)
    assert isinstance(det, LearnedDetector)
    assert det.params.foreground_threshold == 0.45 and det.working_pixel_size_um == 0.15
    img = SEMImage(pixels=np.full((90, 70), 100, np.uint8), pixel_size_um=None)
    with pytest.warns(UserWarning, match="no pixel size"):
        out = det.detect(img)
    assert out.shape == (90, 70) and out.dtype == np.uint32


def test_shipped_detector_is_the_default_and_finds_the_sample_particles() -> None:
    """detect=learned without model_path uses models/fracscope_detector.onnx (int8)."""
    from omegaconf import OmegaConf

    from fracscope.detect import match_instances
    from fracscope.io import iter_images

    det = build_detector(OmegaConf.load(REPO / "conf" / "detect" / "learned.yaml"))
    assert det.model_path.name == "fracscope_detector.onnx" and det.metadata.precision == "int8"
    sample = next(p for p in sorted((REPO / "data" / "sample").rglob("*.tif")))
    image = next(iter_images([sample]))
    labels = det.detect(image)
    classical = build_detector(OmegaConf.load(REPO / "conf" / "detect" / "classical.yaml")).detect(image)
    # Two independent detectors agree on most sections of a real-sized field.
    m = match_instances(classical, labels, iou=0.5)
    assert labels.max() >= 10 and m.tp >= 0.8 * max(int(classical.max()), int(labels.max())), m


def test_field_targets_follow_resampled_instances() -> None:
    from fracscope.data.detector_data import augment_tile, prepare_field, TileAugmentSpec, _sample

    item = _field(0.05, (240, 300))
    f = prepare_field(item, 0.15)
    assert f.image.shape == (80, 100) and 0 <= float(f.image.min()) and float(f.image.max()) <= 1
    assert np.array_equal(f.instances, resize_nearest(item.instances, (80, 100)))
    assert np.array_equal(f.foreground > 0, f.instances > 0)
    s = augment_tile(_sample(f, 0, 0, 64), TileAugmentSpec(), np.random.default_rng(1))
    assert np.array_equal(s["foreground"] > 0, s["instances"] > 0)  # geometry moved maps together
    assert s["distance"][s["foreground"] == 0].max(initial=0) == 0


class _ThresholdNet(torch.nn.Module):
    """A hand-made 'detector': foreground = bright, distance = blurred foreground."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = 40.0 * (x - 0.5)
        d = torch.sigmoid(logit)
        for _ in range(3):
            d = torch.nn.functional.avg_pool2d(d, 9, stride=1, padding=4, count_include_pad=False)
        return torch.cat([logit, d], dim=1)


def test_geometry_round_trip_with_a_known_network(tmp_path) -> None:
    """Resample -> pad -> ONNX -> watershed -> upsample -> refine recovers two discs at full resolution."""
    from fracscope.detect import match_instances

    path = tmp_path / "threshold.onnx"
    export_detector(_ThresholdNet(), path, DetectorMetadata(postprocess={"min_area_px": 10}))
    yy, xx = np.mgrid[:610, :530]
    gt = np.zeros((610, 530), np.uint32)
    gt[(yy - 200) ** 2 + (xx - 170) ** 2 < 120**2] = 1
    gt[(yy - 420) ** 2 + (xx - 390) ** 2 < 90**2] = 2
    pixels = np.where(gt > 0, 180, 30).astype(np.uint8)
    det = LearnedDetector(path, threads=1)
    res = det.detect_with_scores(SEMImage(pixels=pixels, pixel_size_um=0.05))
    m = match_instances(gt, res.labels, iou=0.9)
    assert m.tp == 2 and m.fp == 0, m
    assert res.scores.min() > 0.9
    coarse = LearnedDetector(path, threads=1, refine_boundary=False)
    unrefined = coarse.detect(SEMImage(pixels=pixels, pixel_size_um=0.05))
    # Refining the outline at full resolution is at least as good as the nearest upsample.
    assert match_instances(gt, res.labels, 0.5).ious.mean() >= match_instances(gt, unrefined, 0.5).ious.mean() - 1e-3


def test_sections_below_the_minimum_diameter_are_dropped(tmp_path) -> None:
    path = tmp_path / "threshold.onnx"
    export_detector(_ThresholdNet(), path, DetectorMetadata(postprocess={"min_area_px": 10}))
    yy, xx = np.mgrid[:400, :400]
    pixels = np.full((400, 400), 30, np.uint8)
    pixels[(yy - 150) ** 2 + (xx - 150) ** 2 < 80**2] = 180   # 8 µm particle at 0.05 µm/px
    pixels[(yy - 330) ** 2 + (xx - 330) ** 2 < 12**2] = 180   # 1.2 µm speck
    image = SEMImage(pixels=pixels, pixel_size_um=0.05)
    both = LearnedDetector(path, threads=1, min_diameter_um=None).detect(image)
    assert both.max() == 2
    kept = LearnedDetector(path, threads=1, min_diameter_um=1.5).detect(image)
    assert kept.max() == 1 and kept[150, 150] == 1 and kept[330, 330] == 0


def test_min_score_is_re_set_in_place_and_overridable(tmp_path) -> None:
    from fracscope.export.cli import main as export_main

    path = tmp_path / "threshold.onnx"
    export_detector(_ThresholdNet(), path, DetectorMetadata(postprocess={"min_area_px": 10}))
    assert export_main([str(path), "--min-score", "0.9"]) == 0
    assert read_metadata(path, DetectorMetadata).postprocess_params().min_score == 0.9
    assert read_metadata(path, DetectorMetadata).postprocess_params().min_area_px == 10  # the rest is kept
    assert LearnedDetector(path).params.min_score == 0.9
    assert LearnedDetector(path, min_score=0.5).params.min_score == 0.5
    with pytest.raises(SystemExit):
        export_main([str(path)])  # nothing to set


def test_int8_export_keeps_the_partition_and_says_int8(tmp_path) -> None:
    from fracscope.detect import match_instances

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    meta = DetectorMetadata(postprocess={"min_area_px": 10})
    export_detector(_ThresholdNet(), fp32, meta)
    yy, xx = np.mgrid[:256, :256]
    tiles = np.stack([(((yy - r) ** 2 + (xx - c) ** 2) < 60**2).astype(np.float32) for r, c in
                      ((80, 90), (170, 160), (128, 40), (60, 200))])[:, None]
    report = export_detector(_ThresholdNet(), int8, meta, quantize=True, calibration=tiles)
    assert report.metadata.precision == "int8" and read_metadata(int8, DetectorMetadata).precision == "int8"
    assert report.foreground_agreement_pct >= 98.0
    gt = np.zeros((500, 480), np.uint32)
    gt[(np.mgrid[:500, :480][0] - 180) ** 2 + (np.mgrid[:500, :480][1] - 170) ** 2 < 110**2] = 1
    image = SEMImage(pixels=np.where(gt > 0, 180, 30).astype(np.uint8), pixel_size_um=0.05)
    labels = LearnedDetector(int8, threads=1).detect(image)
    assert match_instances(gt, labels, iou=0.9).tp == 1 and labels.max() == 1
    # A model that cannot meet the agreement bar is refused, and no file appears.
    bad = tmp_path / "bad.onnx"
    with pytest.raises(ExportParityError):
        export_detector(_ThresholdNet(), bad, meta, quantize=True, calibration=tiles,
                        min_foreground_agreement_pct=100.01)
    assert not bad.exists()


def test_datamodule_reads_a_user_dataset(tmp_path) -> None:
    from fracscope.data import write_dataset
    from fracscope.data.detector_data import DetectorDataModule

    write_dataset(tmp_path / "ds", [_field(0.1, (200, 230))])
    dm = DetectorDataModule(path=str(tmp_path / "ds"), tile_px=64, tiles_per_epoch=2, loader={"batch_size": 2})
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (2, 1, 64, 64) and batch["instances"].shape == (2, 64, 64)
    facts = dm.describe()
    assert facts["working_pixel_size_um"] == 0.15 and facts["pixel_size_range_um"] == [0.1, 0.1]
    assert dm.class_weights() is None
