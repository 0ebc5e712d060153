"""The section net's model kind "sections": metadata, network, data, training and export (its use at inference:
test_section_route.py)."""

from __future__ import annotations

import numpy as np
import pytest

from fracscope.model_file import (
    SECTION_TASK,
    MetadataError,
    PhaseMetadata,
    SectionMetadata,
    checkpoint_kind,
    graph_sha256,
    read_metadata,
)
from fracscope.sections import SectionWindow
from fracscope.types import CLASS_NAMES

HPARAMS = {
    "net": {"width": 8, "in_channels": 4, "num_classes": 3, "dropout": 0.2},
    "config": {"task": SECTION_TASK, "size_px": 48, "margin": 1.2, "channels": ["grey", "mask", "pore", "crack"],
               "class_names": list(CLASS_NAMES), "min_eq_diameter_um": 3.0, "pixel_size_range_um": [0.035, 0.08],
               "phase_model_sha256": "ab" * 32, "training_data": "generated", "synth_version": "9",
               "class_counts": [10, 5, 3], "best_metrics": {"val/macro_f1": 0.8, "monitor": 0.8}},
    "class_weights": [1.0, 1.5, 2.0],
}


def test_section_metadata_from_a_checkpoints_hparams_and_json_round_trip() -> None:
    assert checkpoint_kind(HPARAMS) is SectionMetadata
    assert checkpoint_kind({"config": {"task": "phase_map"}}) is PhaseMetadata
    meta = SectionMetadata.from_hparams(HPARAMS)
    assert (meta.size_px, meta.margin, meta.width, meta.class_names) == (48, 1.2, 8, CLASS_NAMES)
    assert SectionWindow.from_metadata(meta) == SectionWindow(48, 1.2)
    assert meta.pixel_size_range_um == (0.035, 0.08) and meta.phase_model_sha256 == "ab" * 32
    assert meta.metrics["val/macro_f1"] == 0.8
    assert meta.extra["class_counts"] == [10, 5, 3] and meta.extra["class_weights"] == [1.0, 1.5, 2.0]
    assert SectionMetadata.from_json(meta.to_json()) == meta
    assert (SectionMetadata.KIND, SectionMetadata.METADATA_KEY, SectionMetadata.INPUT_NAME,
            SectionMetadata.OUTPUT_NAMES) == ("sections", "fracscope_sections", "sections", ("class_probs",))


def test_section_metadata_refuses_what_inference_could_not_use() -> None:
    with pytest.raises(MetadataError, match="window"):
        SectionMetadata(margin=0.5)
    with pytest.raises(MetadataError, match="schema"):
        SectionMetadata(schema_version=99)
    bad = {**HPARAMS, "net": {**HPARAMS["net"], "num_classes": 4}}
    with pytest.raises(MetadataError, match="class outputs"):
        SectionMetadata.from_hparams(bad)


@pytest.mark.train
def test_section_net_shapes_and_export_parity(tmp_path) -> None:
    """An (untrained) section net exports with the softmax inside and a dynamic batch; onnxruntime matches torch."""
    import onnxruntime as ort
    import torch

    from fracscope.export import export_sections
    from fracscope.models.section_net import SectionNet, SectionNetConfig

    torch.manual_seed(0)
    net = SectionNet(SectionNetConfig(width=8)).eval()
    x = np.random.default_rng(0).random((5, 4, 64, 64), dtype=np.float32)
    assert net(torch.from_numpy(x)).shape == (5, 3)
    out = tmp_path / "sections.onnx"
    report = export_sections(net, out, SectionMetadata(width=8))
    assert report.max_abs_diff <= 1e-4 and report.class_argmax_agreement_pct == 100.0
    meta = read_metadata(out, SectionMetadata)
    assert meta.precision == "fp32" and meta.export_date and SectionWindow.from_metadata(meta) == SectionWindow()
    with pytest.raises(MetadataError):
        read_metadata(out, PhaseMetadata)  # a sections file is refused where a phase model is expected
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # the batch axis is dynamic
        (probs,) = sess.run(["class_probs"], {"sections": x[:n]})
        with torch.no_grad():
            ref = torch.softmax(net(torch.from_numpy(x[:n])), 1).numpy()
        assert probs.shape == (n, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
        assert np.abs(probs - ref).max() <= 1e-4


@pytest.mark.train
def test_section_data_splits_by_field_and_augments_training_windows_only(monkeypatch) -> None:
    import torch

    from fracscope.data.section_data import SectionArrays, SectionDataModule

    rng = np.random.default_rng(0)
    n = 60
    arrays = SectionArrays(rng.random((n, 4, 16, 16)).astype(np.float16), rng.integers(0, 3, n),
                           np.repeat(np.arange(10), 6).astype(np.int32), np.full(n, 0.05, np.float32),
                           np.full(n, "gp"))
    dm = SectionDataModule(window={"size_px": 16}, loader={"batch_size": 4, "val_fraction": 0.3, "seed": 1})
    monkeypatch.setattr(dm, "_load", lambda: arrays)
    dm.setup("fit")
    train_fields, val_fields = set(arrays.field[dm.train_idx]), set(arrays.field[dm.val_idx])
    assert val_fields and train_fields and not train_fields & val_fields
    counts = np.bincount(arrays.label[dm.train_idx], minlength=3)
    assert dm.class_weights() == pytest.approx(np.sqrt(counts.sum() / counts))
    val = dm.val_dataloader().dataset
    assert np.array_equal(val[0]["x"].numpy(), arrays.x[dm.val_idx[0]].astype(np.float32))
    train = dm.train_dataloader().dataset
    src = arrays.x[dm.train_idx[0]].astype(np.float32)
    dihedral = [np.rot90(f, k, axes=(1, 2)) for f in (src, src[:, :, ::-1]) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        got = train[0]["x"].numpy()
        seen.add(next(i for i, d in enumerate(dihedral) if np.array_equal(got, d)))
    assert len(seen) > 2  # quarter turns and flips, each a dihedral image of the window
    assert int(train[0]["label"]) == int(arrays.label[dm.train_idx[0]])


@pytest.mark.train
def test_generated_sections_do_not_depend_on_the_generator_processes() -> None:
    """Two small fields (plain and short-crack look), judgeable sections only, the same with 1 or 2 processes."""
    from fracscope.data.section_data import SectionSynthSpec, generate_sections

    spec = SectionSynthSpec(presets=["gp"], n_fields=1, source_pixel_sizes_um=[0.08], field_px=[512, 512])
    one = generate_sections(spec, SectionWindow(), 3.0, workers=1)
    two = generate_sections(spec, SectionWindow(), 3.0, workers=2)
    assert len(one) > 0 and set(one.field) == {0, 1} and set(one.preset) == {"gp"}
    assert np.array_equal(one.x, two.x) and np.array_equal(one.label, two.label)
    assert one.x.shape[1:] == (4, 64, 64) and one.x[:, 1].max() > 0.99  # every window holds its mask


@pytest.mark.train
def test_infiltrated_fields_give_the_windows_of_their_dark_pore_contrast() -> None:
    """A Pt-infiltrated field's windows are those of its fill-darkened pixels, as the net sees them at inference."""
    from dataclasses import replace

    from fracscope.data.section_data import SectionSynthSpec, field_sections, generate_sections
    from fracscope.phase_map import PhaseMapModel
    from fracscope.polarity import fill_darkened

    spec = SectionSynthSpec(presets=["gp"], n_fields=1, source_pixel_sizes_um=[0.08], field_px=[512, 512],
                            short_crack_fraction=0.0, overrides=["imaging.looks_p.infiltrated=1.0"])
    got = generate_sections(spec, SectionWindow(), 3.0, workers=1)
    (_, item), = list(spec.generate(1))
    assert "infiltrated" in item.meta["looks"]
    dark = replace(item, image=replace(item.image, pixels=fill_darkened(item.image.pixels)))
    codes = PhaseMapModel(None, threads=1).predict_codes(dark.image.pixels, 0.08).inside
    want, labels = field_sections(dark, codes, SectionWindow(), 3.0)
    assert len(want) > 0
    assert np.array_equal(got.x, want.astype(np.float16)) and np.array_equal(got.label, labels)


@pytest.mark.train
def test_sections_smoke_trains_through_hydra_and_exports(tmp_path, synth_cache, capsys) -> None:
    """`train.py experiment=sections_smoke`: generated sections, the SectionModule and its checkpoint go through
    the one training path, and `python -m fracscope.export CKPT OUT.onnx` writes a sections file."""
    import onnxruntime as ort
    from hydra import compose, initialize_config_dir

    from fracscope.assets import CONF_DIR
    from fracscope.export.cli import main as export_main
    from fracscope.models.train import run
    from fracscope.phase_map import PhaseMapModel

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=sections_smoke", f"paths.output_dir={tmp_path}", "threads=1",
                                          "logger=csv"])
    assert cfg.model._target_.endswith("SectionModule") and cfg.callbacks.model_checkpoint.monitor == "val/macro_f1"
    result = run(cfg)
    assert {"val/loss", "train/loss", "val/macro_f1"} <= set(result.final_metrics)
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    assert list(synth_cache.glob("sections-*/sections.npz"))  # the generated windows are cached
    out = tmp_path / "sections.onnx"
    assert export_main([str(result.best_checkpoint), str(out)]) == 0
    assert "fp32 parity" in capsys.readouterr().out
    meta = read_metadata(out, SectionMetadata)
    assert meta.width == 8 and SectionWindow.from_metadata(meta) == SectionWindow() and meta.class_names == CLASS_NAMES
    # the phase model's graph (weights), not its file: the class rule written into its metadata does not count
    assert meta.phase_model_sha256 == graph_sha256(PhaseMapModel(threads=1).model_path)
    assert meta.pixel_size_range_um == (0.08, 0.08) and "val/macro_f1" in meta.metrics
    assert sum(meta.extra["class_counts"]) > 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(["class_probs"], {"sections": np.zeros((3, 4, 64, 64), np.float32)})
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(SystemExit):  # an exported sections file has nothing to re-set
        export_main([str(out), "--pore-weight", "1.2"])
