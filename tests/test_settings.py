"""Config read once, at the edge: the settings builder, its one unknown-key policy, and every receiver."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from fracscope.cli import compose
from fracscope.settings import SettingsError, check_keys, settings_from_config


@dataclass(frozen=True)
class Inner:
    size: int = 128
    margin: float = 0.15


@dataclass(frozen=True)
class Flat:
    batch_size: int = 64
    mode: Literal["head", "topology"] = "head"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    enabled: bool = False
    limit: float | None = None
    bins: tuple[float, ...] = (0.0, 1.0)
    pair: tuple[int, int] = (1, 2)
    names: list[str] = field(default_factory=list)
    seq: Sequence[int] = ()
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    inner: Inner = Inner()
    flat: Flat = field(default_factory=Flat, metadata={"flatten": True})
    yes_no: str = field(default="on", metadata={"convert": lambda v: ("on" if v else "off") if isinstance(v, bool) else v})


def test_builder_converts_to_the_annotated_types_nested_and_flattened():
    cfg = OmegaConf.create({
        "name": 7, "enabled": True, "limit": 2, "bins": [0, 4, "inf"], "pair": [3, 4], "names": ["a", "b"],
        "seq": [1, 2], "ranges": {"noise_sd": [0.01, "${inner.size}"]}, "inner": {"size": 64},
        "batch_size": 16, "mode": "topology", "yes_no": False,
    })
    s = settings_from_config(Outer, cfg, "the test config")
    assert s == Outer(name="7", enabled=True, limit=2.0, bins=(0.0, 4.0, float("inf")), pair=(3, 4), names=["a", "b"],
                      seq=(1, 2), ranges={"noise_sd": (0.01, 64.0)}, inner=Inner(size=64), flat=Flat(16, "topology"),
                      yes_no="off")
    assert type(s.limit) is float and type(s.inner.size) is int and type(s.bins) is tuple
    assert settings_from_config(Outer, None, "x") == Outer()  # missing keys keep the defaults
    assert settings_from_config(Outer, s, "x") is s
    assert settings_from_config(Outer, {"limit": None}, "x").limit is None


def test_unknown_key_error_names_the_key_where_and_the_valid_keys():
    with pytest.raises(SettingsError) as err:
        settings_from_config(Outer, {"batch_sise": 3}, "the test config")
    assert str(err.value) == ("unknown key 'batch_sise' in the test config; valid keys: name, enabled, limit, bins, "
                              "pair, names, seq, ranges, inner, batch_size, mode, yes_no")
    with pytest.raises(SettingsError, match=r"^unknown key 'inner\.sise' in the test config; valid keys: size, margin$"):
        settings_from_config(Outer, {"inner": {"sise": 3}}, "the test config")
    with pytest.raises(SettingsError, match=r"^unknown key 'a\.b' in here; valid keys: c$"):
        check_keys({"b": 1}, ["c"], "here", prefix="a.")


@pytest.mark.parametrize(("section", "message"), [
    ({"enabled": "yes"}, "bad value of 'enabled' in the test config: expected true or false"),
    ({"pair": [1, 2, 3]}, "bad value of 'pair' in the test config: expected 2 values"),
    ({"mode": "pooled"}, "bad value of 'mode' in the test config: must be one of ['head', 'topology']"),
    ({"inner": {"size": 1.5}}, "bad value of 'inner.size' in the test config: expected an integer"),
    ({"bins": 3}, "bad value of 'bins' in the test config: expected a list"),
    ({"inner": 3}, "bad value of 'inner' in the test config"),
])
def test_bad_values_are_one_line_settings_errors(section, message):
    with pytest.raises(SettingsError) as err:
        settings_from_config(Outer, section, "the test config")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_missing_mandatory_value_is_named():
    @dataclass(frozen=True)
    class Needs:
        path: str
        n: int = 1

    with pytest.raises(SettingsError, match="^missing value for 'path' in the test config$"):
        settings_from_config(Needs, OmegaConf.create({"path": "???"}), "the test config")


# ---------------------------------------------------------------- infer
def test_infer_config_is_read_once_into_picklable_run_settings():
    from fracscope.analysis import AnalysisSettings
    from fracscope.pipeline import RunSettings
    from fracscope.report import ReportOptions

    s = RunSettings.from_config(compose("infer", "batch_size=8", "trim_rim=false", "report.n_boot=10"))
    assert s.analysis == dataclasses.replace(AnalysisSettings(), batch_size=8, trim_rim="none")
    assert s.report == dataclasses.replace(ReportOptions(), n_boot=10)
    assert s.detect["_target_"] == "fracscope.detect.learned.LearnedDetector" and isinstance(s.detect, dict)
    assert pickle.loads(pickle.dumps(s)) == s  # it travels to the detect workers
    # The YAML documents the code's defaults.
    assert RunSettings.from_config(compose("infer")).analysis == AnalysisSettings()


def test_infer_refuses_a_misspelt_key_that_hydra_would_let_through(tmp_path):
    from fracscope.pipeline import run

    cfg = compose("infer", "+pixel_sise_um=0.05", f"output={tmp_path / 'out'}")
    with pytest.raises(SettingsError, match=r"^unknown key 'pixel_sise_um' in the infer config; valid keys: "
                                            r"input, output, .*pixel_size_um"):
        run(cfg)
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(("overrides", "message"), [
    (["+detect.foreground_treshold=0.4"], "unknown key 'foreground_treshold' in the infer config's detect group"),
    (["detect=classical", "+detect.smooth=1"], "unknown key 'smooth' in the infer config's detect group"),
    (["detect=classical", "+detect.px.smooth=1"], r"unknown key 'px\.smooth' in the infer config's detect group"),
    (["detect=tiled", "+detect.detector.smooth=1"], r"unknown key 'smooth' in the infer config's detect group \(detector\)"),
    (["+report.n_bootstrap=5"], r"unknown key 'report\.n_bootstrap' in the infer config"),
    (["trim_rim=pore"], "trim_rim must be true, false or one of"),
])
def test_infer_groups_refuse_unknown_keys(overrides, message):
    from fracscope.pipeline import RunSettings

    with pytest.raises(SettingsError, match=message):
        RunSettings.from_config(compose("infer", *overrides))


def test_detector_receivers_refuse_unknown_keys():
    from fracscope.detect import ClassicalDetector, ClassicalParams, build_detector

    with pytest.raises(SettingsError, match="unknown key 'smooth' in the classical detector settings"):
        ClassicalDetector(smooth=1.0)
    assert ClassicalDetector(px={"downsample": 3}).params.px.downsample == 3
    assert ClassicalDetector(min_diameter_um=2).params == ClassicalParams(min_diameter_um=2.0)
    with pytest.raises(SettingsError, match="unknown key 'tile' in the detect config; valid keys: detector, tile_px"):
        build_detector({"name": "tiled", "tile": 512, "detector": {"name": "classical"}})


def test_report_options_refuse_unknown_keys():
    from fracscope.report import ReportOptions

    assert ReportOptions.from_config({"report": {"size_bins_um": [0, 5]}}).size_bins_um == (0.0, 5.0)
    with pytest.raises(SettingsError, match="unknown key 'n_bootstrap' in the report config"):
        ReportOptions.from_config({"report": {"n_bootstrap": 5}})


# ---------------------------------------------------------------- pores3d, train, evaluate
@pytest.mark.parametrize("override", ["+align.enabeld=true", "+segment.batch=4", "+memory.chunk=1", "+outputs.plot=false",
                                      "+voxel=1"])
def test_pores3d_config_refuses_unknown_keys(override):
    from fracscope.pores3d import Settings, run

    key = override[1:].split("=")[0]
    with pytest.raises(SettingsError, match=f"unknown key '{key}' in the pores3d config"):
        Settings.from_cfg(compose("pores3d", override))
    with pytest.raises(SettingsError, match=f"unknown key '{key}'"):
        run(compose("pores3d", "input=x.tif", override))


def test_pores3d_config_sections_reach_the_settings():
    from fracscope.pores3d.run import Pores3DConfig

    config = Pores3DConfig.from_config(compose("pores3d", "input=s.tif", "voxel_size_um=[0.02,0.01,0.01]",
                                                "segment.batch_size=4", "outputs.label_compression=none",
                                                "memory.chunk_mb=8", "segment.method=local"))
    assert config.voxel_size_um == (0.02, 0.01, 0.01) and config.segment.batch_size == 4
    s = config.settings()
    assert s.label_compression is None and s.chunk_mb == 8.0 and s.segment.method == "local"


@pytest.mark.train  # imports the training modules (torch, lightning)
def test_train_and_evaluate_configs_refuse_unknown_keys():
    from fracscope.evaluate import EvalSettings
    from fracscope.models.train import TrainSettings

    train = TrainSettings.from_config(compose("train", "paths.output_dir=/tmp/x", "threads=2"))
    assert train.threads == 2 and train.paths.output_dir == "/tmp/x"
    with pytest.raises(SettingsError, match="unknown key 'sede' in the train config"):
        TrainSettings.from_config(compose("train", "paths.output_dir=/tmp/x", "+sede=1"))
    ev = EvalSettings.from_config(compose("eval", "dataset=d", "model_path=m.onnx", "output_dir=o", "batch_size=4"))
    assert ev == EvalSettings("d", "m.onnx", "o", batch_size=4)
    with pytest.raises(SettingsError, match="unknown key 'batch' in the evaluate config"):
        EvalSettings.from_config(compose("eval", "dataset=d", "model_path=m", "output_dir=o", "+batch=4"))
    with pytest.raises(SettingsError, match="missing value for 'dataset' in the evaluate config"):
        EvalSettings.from_config(compose("eval", "model_path=m", "output_dir=o"))


@pytest.mark.train  # imports the training modules (torch, lightning)
def test_training_receivers_refuse_unknown_keys():
    from fracscope.data.datamodule import LoaderSpec, ParticleDataModule
    from fracscope.data.detector_data import DetectorDataModule
    from fracscope.models.detector_module import DetectorModule
    from fracscope.models.module import ParticleModule

    dm = ParticleDataModule(crop={"size": 64}, synth={"presets": ["p"], "imaging_ranges": {"noise_sd": [0.01, 0.05]}},
                            loader={"batch_size": 4})
    assert dm.crop.size == 64 and dm.synth.presets == ("p",) and dm.synth.imaging_ranges == {"noise_sd": (0.01, 0.05)}
    assert dm.batch_size == 4 and DetectorDataModule().batch_size == 8
    assert DetectorDataModule(loader=LoaderSpec(batch_size=3)).batch_size == 3
    for section, key in [("crop", "sise"), ("synth", "n_crop"), ("augment", "flip"), ("loader", "batch")]:
        with pytest.raises(SettingsError, match=f"unknown key '{key}' in the data config's {section} section"):
            ParticleDataModule(**{section: {key: 1}})
    with pytest.raises(SettingsError, match="unknown key 'n_field' in the data config's synth section"):
        DetectorDataModule(synth={"n_field": 1})
    with pytest.raises(SettingsError, match="unknown key 'dice_wieght' in the model config's loss section"):
        ParticleModule(net={"encoder": "resnet18"}, loss={"dice_wieght": 2.0})
    with pytest.raises(SettingsError, match="unknown key 'encoders' in the model config's net section"):
        ParticleModule(net={"encoders": "resnet18"})
    with pytest.raises(SettingsError, match="unknown key 'encoders' in the model config's net section"):
        DetectorModule(net={"encoders": "resnet18"})


# ---------------------------------------------------------------- synth
def test_synth_config_is_typed_and_takes_hydra_overrides():
    from fracscope.synth import SynthConfig, load_config, with_overrides

    cfg = load_config("p", ["crops.pixel_size_um=[0.08,0.09]", "+imaging.randomize.noise_sd=[0.01,0.05]",
                            "imaging.bit_depth=16", "damage=[0.2,0.3,0.5]"])
    assert isinstance(cfg, SynthConfig) and cfg.preset.name == "p"
    assert cfg.crops.pixel_size_um == (0.08, 0.09) and cfg.imaging.randomize == {"noise_sd": (0.01, 0.05)}
    assert cfg.imaging.bit_depth == 16 and cfg.damage == (0.2, 0.3, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
    assert SynthConfig.from_config(cfg.to_dict()) == cfg  # to_dict is what datasets and cache keys record
    assert with_overrides(load_config("gp"), ["preset=p"]).preset == cfg.preset
    held = load_config("gp", heldout=True)
    assert held.seed == 9001 and held.electrode.pixel_size_um == 0.07 and held.particle == load_config("gp").particle
    with pytest.raises(SettingsError, match=r"unknown key 'imaging\.nois_sd' in the synth config"):
        load_config("gp", ["+imaging.nois_sd=0.1"])
    with pytest.raises(SettingsError, match=r"unknown key 'imaging\.nois_sd' in the synth config"):
        load_config("gp", ["imaging.nois_sd=0.1"])
    with pytest.raises(SettingsError, match="unknown synth preset 'q'"):
        load_config("q")


@pytest.mark.train  # imports the training modules (torch, lightning)
def test_synth_config_loads_inside_a_running_hydra_app():
    """What `_outside_hydra_app` was for: the data module reads the synth config while train.py's Hydra is live."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fracscope.data.datamodule import SynthSpec
    from fracscope.synth import load_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        assert load_config("gp").preset.name == "gp"
        jobs = SynthSpec(presets=("gp",), n_crops=4, bright_fraction=0.5, field_pixel_sizes_um=(0.1,), field_px=(64, 96),
                         imaging_ranges={"noise_sd": (0.01, 0.05)}, overrides=("imaging.matrix_level=0.1",)).jobs()
        assert GlobalHydra.instance().is_initialized()
    assert [(kind, n) for kind, _, n in jobs] == [("crops", 2), ("crops", 2), ("electrode", 400)]
    (_, dark, _), (_, bright, _), (_, field_cfg, _) = jobs
    assert dark.imaging.pore_polarity == "dark" and bright.imaging.pore_polarity == "bright"
    assert dark.crops.pixel_size_um == (0.03, 0.15) and field_cfg.electrode.field_px == (64, 96)
    assert field_cfg.electrode.pixel_size_um == 0.1 and dark.imaging.matrix_level == 0.1
    assert all(cfg.imaging.randomize == {"noise_sd": (0.01, 0.05)} for _, cfg, _ in jobs)


@pytest.mark.parametrize(("value", "message"), [("0", "must be a positive, finite number"),
                                                ("-0.05", "must be a positive, finite number"),
                                                ("inf", "must be a positive, finite number"),
                                                ("abc", "bad value of 'pixel_size_um'")])
def test_a_pixel_size_that_is_not_positive_or_not_a_number_is_refused_at_start_up(value, message):
    from fracscope.pipeline import RunSettings

    with pytest.raises(SettingsError, match=message):
        RunSettings.from_config(compose("infer", f"pixel_size_um={value}"))
