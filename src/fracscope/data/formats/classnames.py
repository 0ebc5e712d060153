"""Map the class spellings found in annotation tools onto `CLASS_NAMES`.

CVAT, Labelme and hand-made folders spell the damage classes in many ways
("Mildly damaged", "mild", "mildly-damaged" …). Every reader funnels its names
through `canonical_class_name` so that a typo fails loudly instead of silently
becoming a fourth class.
"""

from __future__ import annotations

import re

from fracscope.types import CLASS_NAMES

# Keys are normalised spellings (lower case, runs of space/-/_ collapsed to "_").
CLASS_ALIASES: dict[str, str | None] = {
    "intact": "intact",
    "undamaged": "intact",
    "pristine": "intact",
    "whole": "intact",
    "mildly_damaged": "mildly_damaged",
    "mild_damaged": "mildly_damaged",
    "mildly": "mildly_damaged",
    "mild": "mildly_damaged",
    "mild_damage": "mildly_damaged",
    "slightly_damaged": "mildly_damaged",
    "cracked": "mildly_damaged",
    "broken": "broken",
    "fractured": "broken",
    "fragmented": "broken",
    "severely_damaged": "broken",
    # Instance-only annotations: a particle without a damage class.
    "particle": None,
    "unlabeled": None,
    "unlabelled": None,
    "unknown": None,
}


def normalise_spelling(name: str) -> str:
    """Lower-case `name` and collapse spaces, hyphens and underscores to one "_"."""
    return re.sub(r"[\s_\-]+", "_", str(name).strip().lower()).strip("_")


def canonical_class_name(name: str, where: str = "") -> str | None:
    """The `CLASS_NAMES` entry that `name` means, or None for an unlabelled particle.

    Parameters
    ----------
    name : str
        A category, folder or CSV class name in any common spelling.
    where : str
        Where the name was found, quoted in the error message.

    Raises
    ------
    ValueError
        When the name is not a known spelling; the message lists the valid ones.
    """
    key = normalise_spelling(name)
    if key == "" or key == "nan":
        return None
    if key in CLASS_ALIASES:
        return CLASS_ALIASES[key]
    valid = ", ".join(repr(k) for k in CLASS_ALIASES)
    place = f" in {where}" if where else ""
    raise ValueError(
        f"unknown particle class {name!r}{place}; expected one of {CLASS_NAMES} "
        f"(accepted spellings, case/space/hyphen-insensitive: {valid})"
    )


def is_class_name(name: str) -> bool:
    """True when `name` is a spelling of one of the three damage classes."""
    return CLASS_ALIASES.get(normalise_spelling(name)) is not None
