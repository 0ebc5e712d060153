"""Learned vs classical particle detector on the frozen held-out synthetic electrode fields.

Usage: ``python bench/detection.py [--model detector.onnx] [--fields 4] [--json out.json]
[--foreground-threshold F --seed-threshold S] [--synth KEY=VALUE ...]``

Without ``--model`` only the classical detector runs. Fields: ``--fields`` per preset
(gp and p) of `conf/synth/heldout.yaml` (seed 9001, 0.07 µm/px, 768 x 1024 px, more
noise and less contrast than training).

Metrics (pooled over all fields of a preset):

* **AP50, AP75**: COCO-style average precision at IoU 0.5 / 0.75. Per image,
  predictions are matched greedily in descending score order to the unmatched
  ground-truth (GT) particle of highest IoU >= the threshold; all predictions are then
  ranked by score, and AP is the mean over the 101 recall points 0, 0.01, ..., 1 of
  the interpolated precision (the largest precision at any recall >= that point).
  Tied scores form one operating point (no arbitrary order inside a tie). Scores: the
  learned detector's mean foreground probability over the instance; the classical
  detector has no score, every instance gets 1, so its PR "curve" is one point
  (P, R) and AP = P x (share of the 101 recall points <= R), about P x R.
* **count err %**: mean over fields of |N_pred - N_gt| / N_gt; **count bias %**: pooled
  (sum N_pred - sum N_gt) / sum N_gt.
* **split %** (broken GT particles; ``split_all %`` all GT particles): a GT particle is
  *split* when >= 2 predictions each lie >= 50 % inside it and each cover >= 5 % of
  it. A broken particle, fragments included, is one instance, so a split broken
  particle is counted as several.
* **merge %**: a GT particle is *merged* when the prediction with the largest overlap
  with it covers >= 50 % of it AND >= 50 % of another GT particle (one prediction
  swallowing two particles).
* **MP/s**: input megapixels per second on one held-out field rendered at 0.05 µm/px
  (1536 x 2048 px), best of 2, all threads the runtime takes; the machine's other load
  is not controlled.

GT sections smaller than 1.5 µm equivalent diameter (the classical detector's
``min_diameter_um``; fines slivers) are ignored: they are not GT, and a prediction
lying >= 50 % on them is dropped from the evaluation (neither TP nor FP).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fracscope.detect import ClassicalDetector, iou_table
from fracscope.types import AnnotatedImage, SEMImage

MIN_GT_DIAMETER_UM = 1.5
RECALL_POINTS = np.linspace(0.0, 1.0, 101)

Predict = Callable[[SEMImage], tuple[np.ndarray, np.ndarray]]  # -> (labels, scores per label 1..N)


@dataclass
class ImageEval:
    """Per-image evaluation pieces, pooled later."""

    scores: np.ndarray  # per evaluated prediction
    tp50: np.ndarray  # bool per evaluated prediction
    tp75: np.ndarray
    n_gt: int
    n_pred: int
    split_broken: int
    n_broken: int
    split_all: int
    merged: int


@dataclass
class Scores:
    """One detector on one preset."""

    detector: str
    preset: str
    n_fields: int
    n_gt: int
    n_pred: int
    ap50: float
    ap75: float
    count_err_pct: float
    count_bias_pct: float
    split_pct: float
    split_all_pct: float
    merge_pct: float
    mp_per_s: float = float("nan")


def _areas(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels.ravel().astype(np.int64))


def greedy_tp(g: np.ndarray, p: np.ndarray, v: np.ndarray, pred_order: np.ndarray, iou: float) -> np.ndarray:
    """COCO greedy matching: per prediction (in `pred_order`), is it a TP at `iou`? Indexed like pred_order."""
    taken: set[int] = set()
    tp = np.zeros(len(pred_order), bool)
    for k, pid in enumerate(pred_order):
        sel = (p == pid) & (v >= iou)
        best, best_iou = -1, -1.0
        for gid, val in zip(g[sel], v[sel], strict=True):
            if int(gid) not in taken and val > best_iou:
                best, best_iou = int(gid), float(val)
        if best >= 0:
            taken.add(best)
            tp[k] = True
    return tp


def coco_ap(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """101-point interpolated AP; tied scores are one operating point."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], tp[order].astype(float)
    ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    recall = (ctp / n_gt)[last_of_tie]
    precision = (ctp / (ctp + cfp))[last_of_tie]
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at recall >= r
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in idx]))


def evaluate_image(item: AnnotatedImage, labels: np.ndarray, scores: np.ndarray) -> ImageEval:
    """Match one image's prediction to its GT (see the module docstring for the definitions)."""
    gt = np.asarray(item.instances).astype(np.int64)
    pred = np.asarray(labels).astype(np.int64)
    px = float(item.image.pixel_size_um)
    gt_area = _areas(gt)
    ignored = gt_area < np.pi * (MIN_GT_DIAMETER_UM / px / 2) ** 2
    ignored[0] = False
    gt_ids = np.flatnonzero((gt_area > 0) & ~ignored)
    gt_ids = gt_ids[gt_ids > 0]
    pred_area = _areas(pred)
    # Predictions lying mostly on ignored GT are left out of the evaluation.
    on_ignored = np.bincount(pred.ravel(), weights=ignored[gt.ravel()].astype(float), minlength=len(pred_area))
    pred_ids = np.flatnonzero((pred_area > 0) & (on_ignored < 0.5 * pred_area))
    pred_ids = pred_ids[pred_ids > 0]
    g, p, v = iou_table(gt, pred)
    keep = np.isin(g, gt_ids) & np.isin(p, pred_ids)
    g, p, v = g[keep], p[keep], v[keep]
    inter = v * (gt_area[g] + pred_area[p]) / (1 + v)  # |g ∩ p| from IoU
    sc = np.asarray(scores, float)[pred_ids - 1] if len(pred_ids) else np.zeros(0)
    order = pred_ids[np.argsort(-sc, kind="mergesort")]
    sc_sorted = np.sort(sc)[::-1]
    frac_pred_in_g = inter / pred_area[p]
    frac_g_covered = inter / gt_area[g]
    # Splits: >= 2 predictions mostly inside g, each covering >= 5 % of it.
    pieces = (frac_pred_in_g >= 0.5) & (frac_g_covered >= 0.05)
    n_pieces = np.bincount(g[pieces], minlength=len(gt_area))
    split = n_pieces >= 2
    broken = np.asarray([pa.particle_id for pa in item.particles if pa.class_name == "broken"], np.int64)
    broken = broken[np.isin(broken, gt_ids)]
    # Merges: g's best-overlap prediction covers >= 50 % of g and >= 50 % of another GT.
    merged = 0
    covers = frac_g_covered >= 0.5
    for gid in gt_ids:
        sel = g == gid
        if not sel.any():
            continue
        best_p = p[sel][np.argmax(inter[sel])]
        if covers[sel][np.argmax(inter[sel])] and np.sum(covers & (p == best_p) & (g != gid)) > 0:
            merged += 1
    return ImageEval(
        scores=sc_sorted,
        tp50=greedy_tp(g, p, v, order, 0.5),
        tp75=greedy_tp(g, p, v, order, 0.75),
        n_gt=len(gt_ids),
        n_pred=len(pred_ids),
        split_broken=int(split[broken].sum()),
        n_broken=len(broken),
        split_all=int(split[gt_ids].sum()),
        merged=merged,
    )


def pool(name: str, preset: str, evals: Sequence[ImageEval]) -> Scores:
    """Pool per-image evaluations into the preset's scores."""
    scores = np.concatenate([e.scores for e in evals])
    n_gt = sum(e.n_gt for e in evals)
    n_pred = sum(e.n_pred for e in evals)
    n_broken = sum(e.n_broken for e in evals)
    pct = lambda a, b: 100.0 * a / b if b else float("nan")  # noqa: E731
    return Scores(
        detector=name,
        preset=preset,
        n_fields=len(evals),
        n_gt=n_gt,
        n_pred=n_pred,
        ap50=coco_ap(scores, np.concatenate([e.tp50 for e in evals]), n_gt),
        ap75=coco_ap(scores, np.concatenate([e.tp75 for e in evals]), n_gt),
        count_err_pct=float(np.mean([pct(abs(e.n_pred - e.n_gt), e.n_gt) for e in evals])),
        count_bias_pct=pct(n_pred - n_gt, n_gt),
        split_pct=pct(sum(e.split_broken for e in evals), n_broken),
        split_all_pct=pct(sum(e.split_all for e in evals), n_gt),
        merge_pct=pct(sum(e.merged for e in evals), n_gt),
    )


def heldout_fields(preset: str, n: int, overrides: Sequence[str] = ()) -> list[AnnotatedImage]:
    """The first `n` fields of the frozen held-out config for `preset`."""
    from fracscope.synth import load_config, make_field

    cfg = load_config(preset, list(overrides), heldout=True)
    return [make_field(cfg, int(cfg.seed), i) for i in range(n)]


def throughput(predict: Predict, image: SEMImage, repeats: int = 2) -> float:
    """Input megapixels per second (best of `repeats`)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        predict(image)
        best = min(best, time.perf_counter() - t)
    return image.pixels.size / 1e6 / best


def detectors(model: Path | None, threads: int | None, **thresholds: float | None) -> dict[str, Predict]:
    """name -> predict(image) -> (labels, scores)."""
    classical = ClassicalDetector()

    def run_classical(image: SEMImage) -> tuple[np.ndarray, np.ndarray]:
        labels = classical.detect(image)
        return labels, np.ones(int(labels.max()), np.float32)

    out: dict[str, Predict] = {"classical": run_classical}
    if model is not None:
        from fracscope.detect.learned import LearnedDetector

        learned = LearnedDetector(model, threads=threads, **thresholds)

        def run_learned(image: SEMImage) -> tuple[np.ndarray, np.ndarray]:
            res = learned.detect_with_scores(image)
            return res.labels, res.scores

        out["learned"] = run_learned
    return out


def table(rows: Sequence[Scores]) -> str:
    cols = ["detector", "preset", "n_fields", "n_gt", "n_pred", "ap50", "ap75", "count_err_pct", "count_bias_pct",
            "split_pct", "split_all_pct", "merge_pct", "mp_per_s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        d = asdict(r)
        lines.append("| " + " | ".join(f"{d[c]:.3f}" if isinstance(d[c], float) else str(d[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="learned detector .onnx (omit: classical only)")
    parser.add_argument("--fields", type=int, default=4, help="held-out fields per preset")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads for the learned detector")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--foreground-threshold", type=float, default=None,
                        help="override the learned model's own (choose it with bench/detector_tuning.py)")
    parser.add_argument("--seed-threshold", type=float, default=None, help="likewise")
    parser.add_argument("--min-score", type=float, default=None,
                        help="likewise (choose it with bench/detector_min_score.py)")
    parser.add_argument("--synth", action="append", default=[], metavar="KEY=VALUE",
                        help="fracscope.synth override of the held-out fields, e.g. 'particle.crack_width_um=[0.4,0.8]' "
                             "(a stress check; thresholds are never chosen on these fields)")
    args = parser.parse_args(argv)

    dets = detectors(args.model, args.threads, foreground_threshold=args.foreground_threshold,
                     seed_threshold=args.seed_threshold, min_score=args.min_score)
    speed_field = heldout_fields("gp", 1, ["electrode.pixel_size_um=0.05", "electrode.field_px=[1536,2048]"])[0]
    rows: list[Scores] = []
    for name, predict in dets.items():
        mps = throughput(predict, speed_field.image)
        for preset in ("gp", "p"):
            evals = []
            for item in heldout_fields(preset, args.fields, args.synth):
                labels, scores = predict(item.image)
                evals.append(evaluate_image(item, labels, scores))
            row = pool(name, preset, evals)
            row.mp_per_s = mps
            rows.append(row)
            print(f"{name} {preset}: AP50 {row.ap50:.3f} AP75 {row.ap75:.3f} ({row.n_gt} GT)", flush=True)
    print(table(rows))
    print("reproduce: python bench/detection.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
