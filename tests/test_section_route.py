"""The default class route at inference: the section net runs on each measured section and the class rule reads it."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from fracscope.analysis import AnalysisSettings, ModelChoice, Models, analyse_image
from fracscope.assets import resolve_phase_model
from fracscope.classify import CRACK_FEATURES, SECTION_FEATURES, CrackClassifier, CrackRule
from fracscope.detect import build_detector
from fracscope.model_file import PhaseMetadata, read_metadata, write_metadata
from fracscope.sections import SectionNetModel, sections_of_image


def _phase_model_with_rule(path, rule) -> str:
    shutil.copy(resolve_phase_model(None), path)
    write_metadata(path, dataclasses.replace(read_metadata(path, PhaseMetadata), class_rule=rule.to_dict()))
    return str(path)


@pytest.fixture(scope="module")
def field():
    from fracscope.synth import load_config, make_field

    return make_field(load_config("gp", overrides=["electrode.field_px=[384,512]"]), 11, 0)


def test_the_class_rule_reads_the_section_net_on_the_measured_sections(tmp_path, field) -> None:
    """A rule whose only non-zero weights are on the net's probabilities calls each section the net's top class;
    the net saw the measured (trimmed) outline and the phase model's codes, nothing else."""
    names = CRACK_FEATURES + SECTION_FEATURES
    coef = np.zeros((3, len(names)))
    coef[:, len(CRACK_FEATURES):] = 10 * np.eye(3)
    rule = CrackClassifier(names, (0.0,) * len(names), (1.0,) * len(names), tuple(map(tuple, coef)), (0.0,) * 3)
    models = Models.for_settings(AnalysisSettings(), ModelChoice(phase_model_path=_phase_model_with_rule(
        tmp_path / "net_rule.onnx", rule)))
    assert models.sections is not None and models.crops is None
    result = analyse_image(field.image, "f", "all", build_detector({"name": "learned"}), models, AnalysisSettings())
    assert len(result.particles) >= 5
    codes = models.phases.predict_codes(field.image.pixels, field.image.pixel_size_um)
    sections = []
    for p in result.particles:
        net = np.array([p.network_probs[k] for k in SECTION_FEATURES])
        assert set(p.network_probs) == set(SECTION_FEATURES) and abs(net.sum() - 1) < 1e-4
        assert p.class_name == ("intact", "mildly_damaged", "broken")[int(np.argmax(net))]
        assert np.allclose(p.probs, rule.predict_measured({**p.measurements, **p.network_probs}))
        r0, c0, r1, c1 = p.bbox
        sections.append(((r0, c0, r1, c1), result.instances[r0:r1, c0:c1] == p.particle_id))
    expected = models.sections.predict(sections_of_image(field.image.pixels, codes.inside, sections,
                                                         models.sections.window))
    got = np.array([[p.network_probs[k] for k in SECTION_FEATURES] for p in result.particles])
    assert np.abs(got - expected).max() < 1e-5


def test_a_rule_on_crack_measures_alone_loads_no_section_net(tmp_path) -> None:
    models = Models.for_settings(AnalysisSettings(), ModelChoice(phase_model_path=_phase_model_with_rule(
        tmp_path / "plain.onnx", CrackRule())))
    assert models.sections is None and models.crops is None
    assert Models.for_settings(AnalysisSettings(classify="head")).sections is None


def test_the_shipped_section_net_file() -> None:
    """Its window and the phase model it was trained on (the graph, whatever class rule the file holds)."""
    from fracscope.model_file import graph_sha256

    net = SectionNetModel()
    assert net.window.size_px == 64 and net.metadata.class_names == ("intact", "mildly_damaged", "broken")
    assert net.metadata.phase_model_sha256 == graph_sha256(resolve_phase_model(None))
    x = np.zeros((2, 4, 64, 64), np.float32)
    assert net.predict(x).shape == (2, 3)
    with pytest.raises(ValueError, match="section inputs"):
        net.predict(np.zeros((2, 4, 32, 32), np.float32))
