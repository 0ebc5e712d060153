"""Score a trained model on an annotated set: ``fracscope-evaluate dataset=DIR model_path=M``.

A native-resolution phase model (``model_path=models/fracscope_phases.onnx``) is scored on the
image grid with its class rule (`evaluate_native_items`); a crop model as follows.

Particles are cropped with the shared crop function with the crop spec the model file (or
checkpoint) stores, and run through `fracscope.runtime.load_backend`; metrics are computed on the crop grid: accuracy, macro-F1, per-class recall and
Cohen's κ against the manual classes (class head alone and combined with crack
topology), pooled pore IoU (true pores >= `min_pore_px`), crack IoU, porosity MAE and
bias (percentage points, Eq. 1 via `fracscope.measure`) and, side by side, the paper's
global-Otsu porosity; porosity again against the truth at the source resolution
(`native_truth`), with the Otsu baseline on the source pixels. Writes metrics.json,
particles.csv, confusion matrices and a contact sheet of misclassified particles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from fracscope.crop import CropSpec  # noqa: E402
from fracscope.data.datamodule import CropArrays, croppable_particles, crops_from_items  # noqa: E402
from fracscope.models.plots import GalleryItem, plot_confusion, plot_contact_sheet  # noqa: E402
from fracscope.scores import (  # noqa: E402
    IGNORE_PHASE,
    ClassScores,
    IoUAccumulator,
    confusion_matrix,
    otsu_porosity_pct,
    porosity_errors_pp,
)
from fracscope.classify import combine_class_with_topology  # noqa: E402
from fracscope.runtime import Backend, load_backend  # noqa: E402
from fracscope.settings import settings_from_config  # noqa: E402
from fracscope.types import CLASS_NAMES, AnnotatedImage, Phase  # noqa: E402


@dataclass
class Predictions:
    """Model outputs on N crops: class probabilities (N, 3) and phase argmax (N, S, S)."""

    probs: np.ndarray
    phases: np.ndarray


def predict_arrays(backend: Backend, arrays: CropArrays, batch_size: int = 32) -> Predictions:
    """Class probabilities and phase argmax of `backend` on the crops, `batch_size` at a time."""
    probs, phases = [], []
    for i in range(0, len(arrays), batch_size):
        x = np.stack([arrays.image[i : i + batch_size].astype(np.float32),
                      arrays.mask[i : i + batch_size].astype(np.float32)], axis=1)
        cp, pp = backend.predict(x)
        probs.append(np.asarray(cp))
        phases.append(np.asarray(pp).argmax(1).astype(np.uint8))
    return Predictions(np.concatenate(probs), np.concatenate(phases))


@dataclass
class EvalReport:
    """Metrics plus per-particle rows (dicts) and the decisions behind them."""

    metrics: dict[str, float]
    rows: list[dict]
    confusion_head: np.ndarray
    confusion_topology: np.ndarray


@dataclass
class NativeTruth:
    """Per-crop porosity at the source resolution, aligned with the crops.

    porosity_pct: Eq. 1 on the annotation's own phase map (NaN where it has none);
    otsu_porosity_pct: the paper's global Otsu threshold on the source pixels of the
    crop's window (particle box plus the crop margin).
    """

    porosity_pct: np.ndarray
    otsu_porosity_pct: np.ndarray


def native_truth(items: list[AnnotatedImage], spec: CropSpec) -> NativeTruth:
    """Source-resolution porosity truth and Otsu baseline for every crop of `crops_from_items`.

    The crop grid shrinks a wide-field particle ~2×, and a pore of 1-2 source pixels then
    lands on a crop pixel or not by chance: the crop-grid truth only estimates the
    particle's porosity (``crop_truth_*`` in `score` says how well). This is the
    reference a scientist means, and where the paper's threshold would be applied.
    """
    from fracscope.measure import porosity_pct

    true, otsu = [], []
    for _, item, inst, p, box in croppable_particles(items):
        pid = int(p.particle_id)
        mask = np.asarray(inst[box]) == pid
        true.append(porosity_pct(item.phases[box], mask) if item.phases is not None else np.nan)
        h, w = inst.shape
        pad = int(round(spec.margin * max(box[0].stop - box[0].start, box[1].stop - box[1].start)))
        r0, r1 = max(0, box[0].start - pad), min(h, box[0].stop + pad)
        c0, c1 = max(0, box[1].start - pad), min(w, box[1].stop + pad)
        window = np.asarray(item.image.pixels[r0:r1, c0:c1], dtype=np.float32)
        otsu.append(otsu_porosity_pct(window, np.asarray(inst[r0:r1, c0:c1]) == pid))
    return NativeTruth(np.asarray(true, float), np.asarray(otsu, float))


def score(arrays: CropArrays, pred: Predictions, min_pore_px: int = 3, native: NativeTruth | None = None) -> EvalReport:
    """All evaluation numbers for crops `arrays` and the model's `pred` on them.

    With `native`, porosity is also scored against the source-resolution truth
    (``native_*`` metrics, and ``crop_truth_*``: the crop-grid truth's own error).
    """
    labels = arrays.label
    masks = arrays.mask > 0
    head = pred.probs.argmax(1)
    topo = combine_class_with_topology(pred.probs, pred.phases, masks)
    cm_head = confusion_matrix(labels, head)
    cm_topo = confusion_matrix(labels, topo)
    metrics: dict[str, float] = {"n_particles": float(len(labels))}
    metrics.update(ClassScores(cm_head).as_dict("head_"))
    metrics.update(ClassScores(cm_topo).as_dict("topology_"))
    pore, pore_all, crack = IoUAccumulator(Phase.PORE, min_pore_px), IoUAccumulator(Phase.PORE), IoUAccumulator(Phase.CRACK)
    # IoU inside the particles only: the question is the section's pores and cracks.
    true_in = np.where(masks, arrays.phases, IGNORE_PHASE)
    for acc in (pore, pore_all, crack):
        acc.update(pred.phases, true_in)
    metrics[f"pore_iou_ge{min_pore_px}px"] = pore.compute()
    metrics["pore_iou_all"] = pore_all.compute()
    metrics["crack_iou"] = crack.compute()
    err = porosity_errors_pp(pred.phases, arrays.phases, masks)
    has = np.isfinite(err)
    true_por = np.full(len(labels), np.nan)
    otsu = np.full(len(labels), np.nan)
    from fracscope.measure import porosity_pct

    for i in np.flatnonzero(has):
        true_por[i] = porosity_pct(arrays.phases[i], masks[i])
        otsu[i] = otsu_porosity_pct(arrays.image[i].astype(np.float32), masks[i])
    if has.any():
        metrics["porosity_mae_pp"] = float(np.abs(err[has]).mean())
        metrics["porosity_bias_pp"] = float(err[has].mean())
        metrics["otsu_porosity_mae_pp"] = float(np.abs(otsu[has] - true_por[has]).mean())
        metrics["otsu_porosity_bias_pp"] = float((otsu[has] - true_por[has]).mean())
    if native is not None:
        pred_por = true_por + err
        ok = has & np.isfinite(native.porosity_pct)
        if ok.any():
            ref = native.porosity_pct[ok]
            for key, est in (("native_porosity", pred_por[ok]), ("native_otsu_porosity", native.otsu_porosity_pct[ok]),
                             ("crop_truth_porosity", true_por[ok])):
                metrics[f"{key}_mae_pp"] = float(np.abs(est - ref).mean())
                metrics[f"{key}_bias_pp"] = float((est - ref).mean())
    rows = []
    for i in range(len(labels)):
        rows.append({
            "index": i,
            "group": int(arrays.group[i]),
            "true_class": CLASS_NAMES[labels[i]] if labels[i] >= 0 else "",
            "head_class": CLASS_NAMES[head[i]],
            "topology_class": CLASS_NAMES[topo[i]],
            "prob_" + CLASS_NAMES[0]: float(pred.probs[i, 0]),
            "prob_" + CLASS_NAMES[1]: float(pred.probs[i, 1]),
            "prob_" + CLASS_NAMES[2]: float(pred.probs[i, 2]),
            "true_porosity_pct": float(true_por[i]),
            "pred_porosity_pct": float(true_por[i] + err[i]) if has[i] else float("nan"),
            "otsu_porosity_pct": float(otsu[i]),
            "native_true_porosity_pct": float(native.porosity_pct[i]) if native is not None else float("nan"),
            "native_otsu_porosity_pct": float(native.otsu_porosity_pct[i]) if native is not None else float("nan"),
            "pixel_size_um": float(arrays.pixel_size_um[i]),
        })
    return EvalReport(metrics, rows, cm_head, cm_topo)


def write_outputs(report: EvalReport, arrays: CropArrays, pred: Predictions, out_dir: Path, max_sheet: int = 36) -> None:
    """metrics.json, particles.csv, confusion PNGs and misclassified.png in `out_dir`."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report.metrics, indent=2))
    pd.DataFrame(report.rows).to_csv(out_dir / "particles.csv", index=False)
    plot_confusion(report.confusion_head, out_dir / "confusion_head.png", title="class head")
    plot_confusion(report.confusion_topology, out_dir / "confusion_topology.png", title="head + crack topology")
    # The class head is infer.py's default (classify=head), so its mistakes are the ones shown.
    head = pred.probs.argmax(1)
    wrong = np.flatnonzero((arrays.label >= 0) & (head != arrays.label))
    items = [
        GalleryItem(arrays.image[i].astype(np.float32), arrays.mask[i], None, pred.phases[i], int(arrays.label[i]),
                    int(head[i]), float(pred.probs[i].max()))
        for i in wrong[:max_sheet]
    ]
    shown = f", first {len(items)} shown" if len(items) < len(wrong) else ""
    plot_contact_sheet(items, out_dir / "misclassified.png",
                       title=f"{len(wrong)} misclassified by the class head{shown} (true → predicted)")


def is_phase_model(model_path: str | Path) -> bool:
    """Whether `model_path` is a native-resolution phase model (.onnx with phase metadata)."""
    from fracscope.model_file import MetadataError, PhaseMetadata, read_metadata

    if Path(model_path).suffix.lower() != ".onnx":
        return False
    try:
        read_metadata(model_path, PhaseMetadata)
    except (MetadataError, OSError, ValueError):
        return False
    return True


def evaluate_native_items(items: list[AnnotatedImage], model_path: str | Path, out_dir: str | Path | None = None,
                          min_pore_px: int = 3, crop_model_path: str | Path | None = None,
                          section_model_path: str | Path | None = None) -> EvalReport:
    """Score the native-resolution phase model and its class rule on annotated images, on the image grid.

    Each annotated particle (the crop selection's: whole, large enough) is segmented exactly as
    `infer.py` does, with its true mask (no rim trim), measured, and classified by the model
    file's class rule (with the crop model's class head from `crop_model_path` and the section net from
    `section_model_path`, default the shipped ones, when the rule reads them). Metrics: the class scores (``native_*``), pore IoU over true pores of at
    least `min_pore_px` source pixels (pooled, inside the sections), crack IoU, and porosity MAE
    and bias against the annotation's own phase map.
    """
    from fracscope.assets import resolve_model
    from fracscope.classify import HEAD_FEATURES, SECTION_FEATURES, class_rule_from_dict, needs_head, needs_sections
    from fracscope.crop import crop_particle
    from fracscope.measure import measure_particle
    from fracscope.phase_map import PhaseMapModel
    from fracscope.phases import particle_phases, predict_crops
    from fracscope.sections import SectionNetModel, image_grey_range, sections_of_image

    model = PhaseMapModel(model_path)
    rule = class_rule_from_dict(model.metadata.class_rule)
    # A rule that reads the crop model's class head gets the shipped crop model's, as infer.py does.
    head = load_backend(resolve_model(crop_model_path)) if needs_head(rule) else None
    net = SectionNetModel(section_model_path) if needs_sections(rule) else None
    pore, pore_all, crack = IoUAccumulator(Phase.PORE, min_pore_px), IoUAccumulator(Phase.PORE), IoUAccumulator(Phase.CRACK)
    rows, true_cls, pred_cls, cache = [], [], [], {}
    for _, item, inst, p, box in croppable_particles(items):
        key = id(item)
        if key not in cache:  # one pass of the model per image
            px = item.image.pixel_size_um or model.working_pixel_size_um
            grey_range = image_grey_range(item.image.pixels) if net is not None else None
            cache = {key: (model.predict_codes(item.image.pixels, px), px, grey_range)}
        codes, px, grey_range = cache[key]
        own = np.asarray(inst[box]) == int(p.particle_id)
        region = (box[0].start, box[1].start, box[0].stop, box[1].stop)
        found = particle_phases(codes, region, own)
        m = measure_particle(own, found.phases, px)
        evidence = dict(m)
        if head is not None:
            crop = crop_particle(item.image.pixels, inst, int(p.particle_id), head.metadata.crop_spec, bbox=box)
            evidence.update(zip(HEAD_FEATURES, map(float, predict_crops(head, [crop], 1)[0][0])))
        if net is not None:
            x = sections_of_image(item.image.pixels, codes.inside, [(region, own)], net.window, grey_range)
            evidence.update(zip(SECTION_FEATURES, map(float, net.predict(x)[0])))
        probs = rule.predict_measured(evidence)
        true_phases = item.phases[box] if item.phases is not None else None
        if true_phases is not None:
            true_in = np.where(own, true_phases, IGNORE_PHASE)[None]
            for acc in (pore, pore_all, crack):
                acc.update(found.phases[None], true_in)
        true_por = porosity_pct_of(true_phases, own)
        label = CLASS_NAMES.index(p.class_name) if p.class_name in CLASS_NAMES else -1
        if label >= 0:
            true_cls.append(label)
            pred_cls.append(int(np.argmax(probs)))
        rows.append({"image": item.stem, "particle_id": int(p.particle_id),
                     "true_class": p.class_name or "", "native_class": CLASS_NAMES[int(np.argmax(probs))],
                     **{f"prob_{n}": float(v) for n, v in zip(CLASS_NAMES, probs)},
                     "true_porosity_pct": true_por, "pred_porosity_pct": m["porosity_pct"], **m})
    cm = confusion_matrix(np.asarray(true_cls, int), np.asarray(pred_cls, int))
    metrics: dict[str, float] = {"n_particles": float(len(rows))}
    metrics.update(ClassScores(cm).as_dict("native_"))
    metrics[f"pore_iou_ge{min_pore_px}px"] = pore.compute()
    metrics["pore_iou_all"] = pore_all.compute()
    metrics["crack_iou"] = crack.compute()
    err = np.asarray([r["pred_porosity_pct"] - r["true_porosity_pct"] for r in rows], float)
    if np.isfinite(err).any():
        metrics["porosity_mae_pp"] = float(np.nanmean(np.abs(err)))
        metrics["porosity_bias_pp"] = float(np.nanmean(err))
    report = EvalReport(metrics, rows, cm, cm)
    if out_dir is not None:
        import pandas as pd

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        pd.DataFrame(rows).to_csv(out / "particles.csv", index=False)
        plot_confusion(cm, out / "confusion_native.png", title="native crack measurements + class rule")
    return report


def porosity_pct_of(phases: np.ndarray | None, mask: np.ndarray) -> float:
    """Eq. 1 porosity of an annotated phase map inside `mask`, NaN without one."""
    from fracscope.measure import porosity_pct

    return float(porosity_pct(phases, mask)) if phases is not None else float("nan")


def evaluate_items(items: list[AnnotatedImage], model_path: str | Path, out_dir: str | Path | None = None,
                   batch_size: int = 32, min_pore_px: int = 3) -> EvalReport:
    """Crop, predict and score annotated images; write outputs when `out_dir` is given.

    A native-resolution phase model (`is_phase_model`) is scored on the image grid instead
    (`evaluate_native_items`).
    """
    if is_phase_model(model_path):
        return evaluate_native_items(items, model_path, out_dir, min_pore_px)
    backend = load_backend(model_path)
    spec = backend.metadata.crop_spec  # the crop spec the model file (or checkpoint) stores
    arrays = crops_from_items(items, spec)
    pred = predict_arrays(backend, arrays, batch_size)
    report = score(arrays, pred, min_pore_px, native_truth(items, spec))
    if out_dir is not None:
        write_outputs(report, arrays, pred, Path(out_dir))
    return report


@dataclass(frozen=True)
class EvalSettings:
    """The `eval` config (conf/eval.yaml), read once by the CLI."""

    dataset: str  # annotated dataset: folder or COCO json (any read_dataset format)
    model_path: str  # .ckpt or .onnx
    output_dir: str
    format: str = "auto"
    batch_size: int = 32
    min_pore_px: int = 3

    @classmethod
    def from_config(cls, cfg) -> EvalSettings:
        """From the composed config; a SettingsError names an unknown key or a bad value."""
        return settings_from_config(cls, cfg, "the evaluate config")


def format_metrics(metrics: dict[str, float]) -> str:
    """A short aligned text table."""
    return "\n".join(f"{k:32s} {v:8.4f}" for k, v in metrics.items())


def evaluate(cfg) -> None:
    """Score the model of `cfg` on its annotated dataset and print the metrics (``fracscope-evaluate``)."""
    from fracscope.data import read_dataset

    settings = EvalSettings.from_config(cfg)
    items = read_dataset(settings.dataset, format=settings.format)
    report = evaluate_items(items, settings.model_path, settings.output_dir, settings.batch_size,
                            settings.min_pore_px)
    print(format_metrics(report.metrics))
    print(f"outputs in {settings.output_dir}")


def main() -> None:
    from fracscope.cli import run_hydra_app

    run_hydra_app("fracscope-evaluate", evaluate, "eval")


if __name__ == "__main__":
    main()
