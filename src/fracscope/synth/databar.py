"""SEM data bars: the information strip a microscope burns below the image.

One home for drawing them: the generator appends one to images (`imaging.looks: [data_bar]`),
and the scale-bar reader's tests (tests/test_scalebar.py) draw theirs with `render_data_bar`,
so the reader is tested on the bars the models are trained on.

Three vendor-like layouts, drawn at 1024 px width and 18 px text and scaled from there:
"fei" (black strip, white filled bar, label above, HV/mag/WD/det fields to the left),
"zeiss" (grey strip, black bar, label below, EHT/WD/Signal/Mag fields to the right),
"zeiss_left" (white strip, black bar, label to its left), "jeol" (black strip, white
2-px line with end ticks, label to its right, "10µm" without a space).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LAYOUTS: tuple[str, ...] = ("fei", "zeiss", "zeiss_left", "jeol")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
# Scale-bar values a microscope picks (µm), 100 nm to 50 µm.
BAR_VALUES_UM: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


@dataclass(frozen=True)
class DataBar:
    """A drawn strip (uint8, rows x width) and where its scale bar lies."""

    pixels: np.ndarray
    bar_col0: int
    bar_length_px: int
    label: str


def font(size: int, dejavu: bool = True):
    """DejaVu Sans when installed, else Pillow's built-in scalable font (no µ glyph)."""
    from PIL import ImageFont

    if dejavu and DEJAVU.exists():
        return ImageFont.truetype(str(DEJAVU), size)
    return ImageFont.load_default(size=size)


def scale_label(value_um: float) -> str:
    """'500 nm' below 1 µm, else '10 µm'."""
    if value_um < 1.0:
        return f"{round(value_um * 1000)} nm"
    return f"{value_um:g} µm"


def _centered_text(draw, center_x: float, top: int, text: str, f, fill: int) -> None:
    x0, _, x1, _ = draw.textbbox((0, 0), text, font=f)
    draw.text((center_x - (x1 - x0) / 2, top), text, font=f, fill=fill)


def render_data_bar(
    layout: str,
    width: int,
    label: str,
    bar_length_px: int,
    font_px: int = 18,
    dejavu: bool = True,
    hv_kv: float = 5.0,
    mag_x: int = 10000,
) -> DataBar:
    """A data bar of `width` px holding a scale bar of `bar_length_px` labelled `label`.

    Positions are those of a 1024-px-wide bar with 18-px text, scaled by `width` / 1024
    across and `font_px` / 18 down, so the default size is the reference drawing.
    """
    from PIL import Image, ImageDraw

    sx, sy = width / 1024, font_px / 18

    def x(v: float) -> int:
        return round(v * sx)

    def y(v: float) -> int:
        return round(v * sy)

    f = font(font_px, dejavu)
    length = int(bar_length_px)
    mag = f"{mag_x:,}"
    if layout == "fei":
        strip = Image.new("L", (width, y(70)), 0)
        d = ImageDraw.Draw(strip)
        hfw = f"HFW {12.8 * 10000 / mag_x:.1f} µm"
        for x0, text in ((10, f"HV {hv_kv:.2f} kV"), (150, f"mag {mag.replace(',', ' ')} x"), (310, "WD 5.1 mm"), (450, "det ETD")):
            d.text((x(x0), y(12)), text, font=f, fill=255)
            d.text((x(x0), y(40)), hfw if x0 == 10 else "", font=f, fill=255)
        col0 = x(620)
        _centered_text(d, col0 + length / 2, y(12), label, f, 255)
        d.rectangle((col0, y(42), col0 + length - 1, y(47)), fill=255)
    elif layout in ("zeiss", "zeiss_left"):
        bg = 200 if layout == "zeiss" else 255
        strip = Image.new("L", (width, y(80)), bg)
        d = ImageDraw.Draw(strip)
        if layout == "zeiss":
            col0 = x(40)
            d.rectangle((col0, y(22), col0 + length - 1, y(25)), fill=0)
            _centered_text(d, col0 + length / 2, y(36), label, f, 0)
        else:
            d.text((x(20), y(25)), label, font=f, fill=0)
            col0 = x(20) + round(d.textlength(label, font=f)) + x(15)
            d.rectangle((col0, y(32), col0 + length - 1, y(36)), fill=0)
        fields = ((560, 10, f"EHT = {hv_kv:.2f} kV"), (560, 45, "WD = 5.1 mm"), (790, 10, "Signal A = SE2"),
                  (790, 45, f"Mag = {mag_x / 1000:.2f} K X"))
        for x0, y0, text in fields:
            d.text((x(x0), y(y0)), text, font=f, fill=0)
    elif layout == "jeol":
        strip = Image.new("L", (width, y(50)), 0)
        d = ImageDraw.Draw(strip)
        for x0, text in ((10, "SEI"), (80, f"{hv_kv:.1f}kV"), (170, f"X{mag}"), (300, "WD 5.1mm")):
            d.text((x(x0), y(15)), text, font=f, fill=255)
        col0 = x(560)
        d.rectangle((col0, y(24), col0 + length - 1, y(25)), fill=255)
        for x0 in (col0, col0 + length - 2):
            d.rectangle((x0, y(18), x0 + 1, y(31)), fill=255)
        d.text((col0 + length + x(12), y(15)), label.replace(" ", ""), font=f, fill=255)
    else:
        raise ValueError(f"data bar layout must be one of {LAYOUTS}, got {layout!r}")
    return DataBar(np.asarray(strip), col0, length, label)


def _max_bar_px(layout: str, width: int) -> int:
    # Room to the right of the bar's start before the strip ends or the next text field.
    room = {"fei": 1024 - 620 - 40, "zeiss": 560 - 40 - 30, "zeiss_left": 560 - 200, "jeol": 1024 - 560 - 120}
    return round(room[layout] * width / 1024)


def draw_data_bar(width: int, pixel_size_um: float, rng: np.random.Generator) -> DataBar:
    """A data bar for an image `width` px wide at `pixel_size_um`: layout, kV and text size drawn,
    the scale bar the longest value of `BAR_VALUES_UM` that fits and is under 35 % of the width."""
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    font_px = max(7, round(width / 1024 * float(rng.uniform(14, 22))))
    hv_kv = float(rng.choice([1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0]))
    limit = min(_max_bar_px(layout, width), 0.35 * width)
    fits = [v for v in BAR_VALUES_UM if v / pixel_size_um <= limit]
    value = fits[-1] if fits else BAR_VALUES_UM[0]
    length = max(4, round(value / pixel_size_um))
    # Magnification as a 127-mm-wide display shows the field.
    mag = max(10, int(round(127e3 / (width * pixel_size_um), -1)))
    return render_data_bar(layout, width, scale_label(value), length, font_px, hv_kv=hv_kv, mag_x=mag)
