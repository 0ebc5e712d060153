"""Write TIFFs carrying FEI-, Zeiss-, TESCAN- or ImageJ-style pixel-size metadata, and the text
files Hitachi and JEOL microscopes save beside an image.

For tests: real instrument files cannot ship with the project, so tests write small
files whose tags tifffile parses exactly as it parses the instruments' own
(``TiffFile.fei_metadata``, ``TiffFile.sem_metadata``, ``TiffFile.imagej_metadata``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from fracscope.io.pixel_size import TAG_FEI_HELIOS, TAG_TESCAN, TAG_ZEISS_SEM


@dataclass(frozen=True)
class SEMTags:
    """Which pixel-size metadata to write; each field left None is not written.

    fei_pixel_size_um: FEI/Thermo Helios tag 34682, ``[Scan] PixelWidth`` in metres.
    fei_image_height_px: ``[Image] ResolutionY`` of the FEI tag (the image height without
        the data bar), written only with fei_pixel_size_um.
    zeiss_pixel_size: (value, unit) for Zeiss tag 34118, e.g. (50.0, "nm") or (0.05, "µm").
    tescan_pixel_size_um: TESCAN tag 50431 (bytes), ``PixelSizeX=`` in metres.
    imagej_pixel_size_um: ImageJ description ``unit=micron`` + XResolution (pixels per µm).
    resolution_pixel_size_um: plain TIFF XResolution in pixels per centimetre
        (ignored when imagej_pixel_size_um is set: both use XResolution).
    """

    fei_pixel_size_um: float | None = None
    fei_image_height_px: int | None = None
    zeiss_pixel_size: tuple[float, str] | None = None
    tescan_pixel_size_um: float | None = None
    imagej_pixel_size_um: float | None = None
    resolution_pixel_size_um: float | None = None


def fei_text(pixel_size_um: float, image_height_px: int | None = None) -> str:
    """INI-style FEI metadata text as tifffile's ``read_fei_metadata`` expects it."""
    lines = ["[User]", "Date=01/01/2024", "[Scan]", f"PixelWidth={pixel_size_um * 1e-6!r}",
             f"PixelHeight={pixel_size_um * 1e-6!r}", "[Beam]", "HV=5000"]
    if image_height_px is not None:
        lines += ["[Image]", f"ResolutionY={int(image_height_px)}"]
    return "\r\n".join(lines) + "\r\n"


def zeiss_text(value: float, unit: str) -> str:
    """Zeiss SmartSEM tag text: leading numbers, then UPPERCASE key / ``Name = value unit`` pairs.

    tifffile's ``read_cz_sem`` needs the key line fully upper-case and the value as
    exactly two whitespace-separated words, number and unit.
    """
    lines = ["0", "0", "DP_DETECTOR_TYPE", "Detector = InLens", "AP_IMAGE_PIXEL_SIZE",
             f"Image Pixel Size = {value:g} {unit}", "AP_WD", "WD = 5.1 mm"]
    return "\r\n".join(lines) + "\r\n"


def tescan_bytes(pixel_size_um: float) -> bytes:
    """A TESCAN tag 50431 payload: a binary header, then ``Key=Value`` lines (pixel size in metres)."""
    lines = ["[MAIN]", "Description=", "Device=MIRA3", f"PixelSizeX={pixel_size_um * 1e-6!r}",
             f"PixelSizeY={pixel_size_um * 1e-6!r}", "HV=15000.0"]
    return b"\x00\x01\x02\x03" * 4 + ("\r\n".join(lines) + "\r\n").encode("ascii")


def write_hitachi_txt(image_path: str | Path, pixel_size_um: float, size_px: tuple[int, int] = (1280, 960)) -> Path:
    """The text file a Hitachi SEM saves beside `image_path` (same name, ``.txt``): ``PixelSize`` in nm for an
    image of `size_px` (width, height; ``DataSize``)."""
    lines = ["[SemImageFile]", "InstructName=S-4800", "SerialNumber=123456-01", f"DataSize={size_px[0]}x{size_px[1]}",
             f"PixelSize={pixel_size_um * 1e3:g}", "AcceleratingVoltage=5000 Volt", "Magnification=20000"]
    path = Path(image_path).with_suffix(".txt")
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")
    return path


def write_jeol_txt(image_path: str | Path, marker: str, bar_px: int, size_px: tuple[int, int] = (1280, 960)) -> Path:
    """The text file a JEOL SEM saves beside `image_path`: a scale marker (e.g. "1um") `bar_px` pixels long, for
    an image of `size_px` (width, height; ``$CM_FULL_SIZE``)."""
    lines = ["$CM_FORMAT JEOL/SEM", "$CM_LABEL JEOL", f"$CM_FULL_SIZE {size_px[0]} {size_px[1]}", "$CM_MAG 5000",
             f"$$SM_MICRON_BAR {int(bar_px)}", f"$$SM_MICRON_MARKER {marker}", "$SEM_DATA_VERSION 1"]
    path = Path(image_path).with_suffix(".txt")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_sem_tiff(path: str | Path, pages: np.ndarray | list[np.ndarray], tags: SEMTags) -> Path:
    """Write one or more 2-D pages to `path` with the metadata `tags` asks for.

    Parameters
    ----------
    path : str or Path
        Output file.
    pages : ndarray or list of ndarray
        A 2-D page, or a list of 2-D pages of one dtype (uint8, uint16 or float32 when
        ImageJ metadata is written).
    tags : SEMTags
        Which metadata to write.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    page_list = [pages] if isinstance(pages, np.ndarray) and pages.ndim == 2 else list(pages)
    extratags = []
    if tags.fei_pixel_size_um is not None:
        text = fei_text(tags.fei_pixel_size_um, tags.fei_image_height_px)
        extratags.append((TAG_FEI_HELIOS, "s", 0, text.encode("ascii"), True))
    if tags.zeiss_pixel_size is not None:
        # Zeiss writes Windows-1252 text (µ is byte 0xB5); tifffile decodes it back.
        text = zeiss_text(*tags.zeiss_pixel_size)
        extratags.append((TAG_ZEISS_SEM, "s", 0, text.encode("cp1252"), True))
    if tags.tescan_pixel_size_um is not None:
        extratags.append((TAG_TESCAN, 7, 0, tescan_bytes(tags.tescan_pixel_size_um), True))  # 7: UNDEFINED
    kwargs: dict = {}
    imagej = tags.imagej_pixel_size_um is not None
    if imagej:
        kwargs = {"resolution": (1.0 / tags.imagej_pixel_size_um,) * 2, "metadata": {"unit": "micron", "axes": "ZYX"}}
    elif tags.resolution_pixel_size_um is not None:
        per_cm = 1e4 / tags.resolution_pixel_size_um
        kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, imagej=imagej) as tw:
        if imagej:
            # ImageJ hyperstacks are written in one call; one page per slice.
            stack = np.stack([np.asarray(p) for p in page_list])
            if len(page_list) == 1:
                stack = stack[0]
                kwargs["metadata"]["axes"] = "YX"
            tw.write(stack, extratags=extratags, **kwargs)
        else:
            for page in page_list:
                tw.write(np.asarray(page), extratags=extratags, contiguous=False, **kwargs)
    return path
