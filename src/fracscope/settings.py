"""Typed settings from a config section: the one way config becomes settings.

Every command reads its config once, at the edge, into frozen dataclasses with
`settings_from_config`; everything below takes those typed settings, never a DictConfig.
The one policy for keys: a key that no field takes is an error (`SettingsError`) that
names the key, where it was found and the valid keys, so a typo (or Hydra's suggested
``+key=...``) never passes silently. Missing keys keep the dataclass defaults.

Field metadata (``dataclasses.field(metadata=...)``) adapts a field where its config
shape differs from its type:

* ``{"flatten": True}`` on a dataclass-typed field: its keys sit in the same section as
  the outer ones (the flat `infer` config holds both run and analysis keys);
* ``{"convert": fn}``: ``fn(value)`` builds the field's value (raise ValueError on a bad one).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")
MISSING = "???"  # OmegaConf's mandatory value not given


class SettingsError(ValueError):
    """A config that cannot run: an unknown key or a value that does not fit its setting."""


def settings_from_config(cls: type[T], section: Any, where: str) -> T:
    """A `cls` (a dataclass) from a config section.

    Parameters
    ----------
    cls : a dataclass type; nested dataclass fields are built from nested sections.
    section : a mapping (dict or OmegaConf DictConfig, interpolations resolved), an
        instance of `cls` (returned as is), or None (all defaults).
    where : what the section is, for messages, e.g. "the infer config".

    Raises
    ------
    SettingsError
        On a key that no field takes, or a value that does not convert to its field's type.

    Examples
    --------
    >>> settings_from_config(ReportOptions, {"n_boot": 100}, "the report config")  # doctest: +SKIP
    """
    if isinstance(section, cls):
        return section
    return _build(cls, _section(section, where), where, "")


def check_keys(section: Mapping[str, Any], valid: Sequence[str], where: str, prefix: str = "") -> None:
    """Refuse the first key of `section` that is not in `valid` (for sections no dataclass describes).

    Raises
    ------
    SettingsError
        "unknown key 'PREFIX.KEY' in WHERE; valid keys: ..." (the one wording of this error).
    """
    for key in section:
        if key not in valid:
            raise SettingsError(f"unknown key {prefix + str(key)!r} in {where}; valid keys: {', '.join(valid)}")


def _plain(section: Any, where: str) -> Any:
    """`section` as plain dicts and lists with interpolations resolved."""
    if section is None:
        return {}
    if OmegaConf.is_config(section):
        try:
            return OmegaConf.to_container(section, resolve=True)
        except OmegaConfBaseException as exc:  # e.g. an interpolation to a key that is not there
            raise SettingsError(f"{where}: {str(exc).splitlines()[0]}") from None
    return section


def _section(section: Any, where: str) -> Mapping[str, Any]:
    section = _plain(section, where)
    if not isinstance(section, Mapping):
        raise SettingsError(f"{where} must be a mapping of settings, got {type(section).__name__}")
    return section


def _field_names(cls: type) -> list[str]:
    """Keys a section for `cls` may hold (flattened fields contribute theirs)."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            names += _field_names(_hints(cls)[f.name])
        elif f.init:
            names.append(f.name)
    return names


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, section: Mapping[str, Any], where: str, prefix: str) -> Any:
    check_keys(section, _field_names(cls), where, prefix)
    # A mandatory value left missing ("???") is absent: the default, or an error naming the field.
    section = {k: v for k, v in section.items() if not (isinstance(v, str) and v == MISSING)}
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("flatten"):
            sub = hints[f.name]
            own = {k: v for k, v in section.items() if k in _field_names(sub)}
            kwargs[f.name] = _build(sub, own, where, prefix)
        elif f.init and f.name in section:
            name = prefix + f.name
            value = section[f.name]
            try:
                convert = f.metadata.get("convert")
                kwargs[f.name] = convert(value) if convert else _convert(hints[f.name], value, where, name)
            except SettingsError:
                raise
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"bad value of {name!r} in {where}: {exc}") from None
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and required and f.name not in kwargs:
            raise SettingsError(f"missing value for {prefix + f.name!r} in {where}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"bad setting in {where}: {exc}") from None


def _convert(tp: Any, value: Any, where: str, name: str) -> Any:
    """`value` as type `tp` (raises TypeError or ValueError when it does not fit)."""
    if OmegaConf.is_config(value):
        value = _plain(value, where)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping of {', '.join(_field_names(tp))}, got {value!r}")
        return _build(tp, value, where, name + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, where, name)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, tuple, list)):
            raise TypeError(f"expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"expected {len(args)} values, got {list(value)!r}")
            return tuple(_convert(a, v, where, f"{name}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
        return items if origin is list or tp is list else tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, got {value!r}")
        k_tp, v_tp = args if args else (Any, Any)
        return {_convert(k_tp, k, where, name): _convert(v_tp, v, where, f"{name}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (Mapping, list, tuple)):
            raise TypeError(f"expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise TypeError(f"expected {tp.__name__}, got {value!r}")
    return value


def _convert_union(args: tuple, value: Any, where: str, name: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise TypeError("may not be null")
    members = [a for a in args if a is not type(None)]
    for a in members:  # an exact match first: `str | bool` keeps true a bool
        if isinstance(a, type) and type(value) is a:
            return value
    errors = []
    for a in members:
        try:
            return _convert(a, value, where, name)
        except (TypeError, ValueError) as exc:
            errors.append(str(exc))
    raise TypeError("; ".join(errors))
