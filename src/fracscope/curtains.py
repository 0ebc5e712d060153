"""Curtain streaks: straight crack lines along the milling direction are milling artefacts, not cracks.

Ion milling (FIB, broad-beam) leaves *curtaining*: thin dark streaks that run down the section along
the beam, across every particle, usually within a few degrees of the image's columns (of its rows in
an image turned by 90°). The phase model, trained on gentler generated curtains, calls the darkest of
them cracks (on ``3_phase.tif``, the real FIB-SEM image in ``../shared/reference``, 14 of its 25
line-like crack components were streaks; two intact sections were called *mildly damaged* for them).

`find_curtain_streaks` reads the crack map of a whole image: its crack components (8-connected,
inside particles) are measured by their second moments (length = major axis, width = minor axis,
orientation). A *line* is thin (width ≤ `MAX_LINE_WIDTH_PX`) and elongated. Curtaining is present
when at least `MIN_STREAKS` long lines (elongation ≥ `STREAK_ELONGATION`), in at least
`MIN_STREAK_PARTICLES` particles, lie within ± `STREAK_TOLERANCE_DEG` of one direction near the
columns or the rows (± `MAX_TILT_DEG`): real cracks run radially, in every direction, and do not
line up across particles. Then every line (elongation ≥ `LINE_ELONGATION`) within ±
`REMOVE_TOLERANCE_DEG` of that direction is a streak, and `remove_curtain_streaks` makes its pixels
solid again, and so are the pieces lying wholly on a streak's line (`streak_pieces`). A real crack that is straight, thin and parallel to the streaks of a curtained image
is lost with them; the number of components removed is reported per image (images.csv
``n_curtain_streaks``). Measurements: docs/BENCHMARKS.md, "Curtain streaks are not cracks".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from fracscope.phases import ImagePhaseCodes
from fracscope.types import Phase

# A line is at most this wide (minor axis of its second moments, px): streaks are 1-3 px wide.
MAX_LINE_WIDTH_PX = 4.0
# Components smaller than this (px) have no usable orientation.
MIN_LINE_AREA_PX = 6
# Long lines that establish curtaining: elongation (major / minor axis) at least this.
STREAK_ELONGATION = 12.0
# At least this many long lines within ± STREAK_TOLERANCE_DEG of one direction ...
MIN_STREAKS = 4
STREAK_TOLERANCE_DEG = 4.0
# ... in at least this many particles.
MIN_STREAK_PARTICLES = 3
# Curtains run along the beam: within this angle of the image's columns (or rows).
MAX_TILT_DEG = 20.0
# Once established, every line this elongated within ± REMOVE_TOLERANCE_DEG of the direction goes.
LINE_ELONGATION = 5.0
REMOVE_TOLERANCE_DEG = 8.0
# Pieces of a streak too short to be lines (a streak the model broke up): crack components every pixel of which
# lies within this distance of a streak's own line, at most one streak length beyond its ends.
RESIDUE_DISTANCE_PX = 1.5


@dataclass(frozen=True)
class CrackLines:
    """The crack components of one image, measured: index k describes component label k + 1."""

    labels: np.ndarray  # int32 (H, W), 0 where no crack
    area_px: np.ndarray
    length_px: np.ndarray  # major axis of the second moments
    width_px: np.ndarray  # minor axis
    tilt_deg: np.ndarray  # angle from the image's columns, (-90, 90]; positive: the lower end lies to the right
    particle: np.ndarray  # the instance under one of the component's pixels
    centre_rc: np.ndarray  # (k, 2) centroid, rows and columns


def crack_lines(crack: np.ndarray, instances: np.ndarray) -> CrackLines:
    """Label and measure the 8-connected components of a boolean crack map."""
    n, labels = cv2.connectedComponents(crack.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    rows, cols = np.nonzero(labels)
    lab = labels[rows, cols] - 1
    k = n - 1
    area = np.bincount(lab, minlength=k).astype(float)
    safe = np.maximum(area, 1)
    mr, mc = np.bincount(lab, rows, k) / safe, np.bincount(lab, cols, k) / safe
    dr, dc = rows - mr[lab], cols - mc[lab]
    # Second central moments; + 1/12 for the pixel's own extent, so a 1-px line is 1 px wide.
    vrr = np.bincount(lab, dr * dr, k) / safe + 1 / 12
    vcc = np.bincount(lab, dc * dc, k) / safe + 1 / 12
    vrc = np.bincount(lab, dr * dc, k) / safe
    half = np.sqrt(((vrr - vcc) / 2) ** 2 + vrc**2)
    major, minor = (vrr + vcc) / 2 + half, np.maximum((vrr + vcc) / 2 - half, 0)
    # The major axis's angle from the row axis (a vertical line: 0).
    tilt = 0.5 * np.degrees(np.arctan2(2 * vrc, vrr - vcc))
    particle = np.zeros(k, np.int64)
    particle[lab] = instances[rows, cols]  # one of its pixels' (a component may straddle two sections)
    # A uniform bar of length L has variance L^2 / 12: the axes are sqrt(12 x variance).
    return CrackLines(labels, area, np.sqrt(12 * major), np.sqrt(12 * minor), tilt, particle,
                      np.column_stack([mr, mc]))


def angle_between_deg(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Signed difference a - b of two line directions in degrees, in [-90, 90) (lines have no head)."""
    return (np.asarray(a, float) - b + 90.0) % 180.0 - 90.0


def find_curtain_streaks(lines: CrackLines) -> tuple[float | None, np.ndarray]:
    """The streak direction (degrees from the columns, in [-90, 90)) and which components are streaks;
    (None, none) when the image shows no curtaining."""
    none = np.zeros(lines.area_px.size, bool)
    elongation = lines.length_px / np.maximum(lines.width_px, 1.0)
    line = (lines.area_px >= MIN_LINE_AREA_PX) & (lines.width_px <= MAX_LINE_WIDTH_PX)
    off_axis = np.minimum(np.abs(angle_between_deg(lines.tilt_deg, 0.0)), np.abs(angle_between_deg(lines.tilt_deg, 90.0)))
    long = line & (elongation >= STREAK_ELONGATION) & (off_axis <= MAX_TILT_DEG)
    if long.sum() < MIN_STREAKS:
        return None, none
    tilts, weights = lines.tilt_deg[long], lines.length_px[long]
    # The direction with the most long lines within the tolerance (ties: the most length).
    counts = np.abs(angle_between_deg(tilts[:, None], tilts[None, :])) <= STREAK_TOLERANCE_DEG
    best = int(np.argmax(counts.sum(1) + (counts * weights[None, :]).sum(1) / (weights.sum() + 1)))
    members = counts[best]
    if members.sum() < MIN_STREAKS or len(set(lines.particle[long][members].tolist()) - {0}) < MIN_STREAK_PARTICLES:
        return None, none
    anchor = tilts[best]
    direction = float(anchor + np.average(angle_between_deg(tilts[members], anchor), weights=weights[members]))
    direction = float(angle_between_deg(direction, 0.0))
    near = np.abs(angle_between_deg(lines.tilt_deg, direction)) <= REMOVE_TOLERANCE_DEG
    streak = line & (elongation >= LINE_ELONGATION) & near
    return direction, streak | streak_pieces(lines, streak)


def streak_pieces(lines: CrackLines, streak: np.ndarray) -> np.ndarray:
    """The components (not streaks themselves) that lie wholly on the line of a streak (`RESIDUE_DISTANCE_PX`)."""
    rows, cols = np.nonzero(lines.labels)
    lab = lines.labels[rows, cols] - 1
    keep = ~streak[lab]
    rows, cols, lab = rows[keep], cols[keep], lab[keep]
    on_line = np.zeros(lab.size, bool)
    for k in np.flatnonzero(streak):
        t = np.radians(lines.tilt_deg[k])
        dr, dc = rows - lines.centre_rc[k, 0], cols - lines.centre_rc[k, 1]
        along, across = dr * np.cos(t) + dc * np.sin(t), -dr * np.sin(t) + dc * np.cos(t)
        on_line |= (np.abs(across) <= RESIDUE_DISTANCE_PX) & (np.abs(along) <= lines.length_px[k])
    n = lines.area_px.size
    pixels = np.bincount(lab, minlength=n)
    return (pixels > 0) & (np.bincount(lab, on_line, n) == pixels)


def remove_curtain_streaks(codes: ImagePhaseCodes, instances: np.ndarray) -> tuple[ImagePhaseCodes, int]:
    """`codes` with the curtain streaks' crack pixels made solid, and how many components were removed."""
    crack = (codes.inside == Phase.CRACK) & (instances > 0)
    lines = crack_lines(crack, instances)
    direction, streak = find_curtain_streaks(lines)
    if direction is None or not streak.any():
        return codes, 0
    gone = np.concatenate([[False], streak])[lines.labels]
    inside, best = codes.inside.copy(), codes.best.copy()
    inside[gone] = Phase.SOLID
    best[gone & (best == Phase.CRACK)] = Phase.SOLID
    return dataclasses.replace(codes, inside=inside, best=best), int(streak.sum())
