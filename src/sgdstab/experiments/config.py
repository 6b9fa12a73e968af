"""Experiment configurations: frozen dataclasses with defaults, loaded from TOML (or a run's ``config.json``).

A configuration class is a frozen dataclass whose fields carry defaults and, through :func:`param`, their range
(``ge``, ``gt``, ``le``, ``lt``), allowed values (``choices``), a minimum tuple length and a help text. Supported
field types: ``bool``, ``int``, ``float``, ``str``, ``tuple[T, ...]`` of those, and ``T | None`` (None only as a
default: TOML has no null). A class may define ``check(self) -> None`` for constraints between fields; it raises
:class:`ConfigError` through :func:`fail`.

A config file holds flat ``key = value`` pairs (an optional ``experiment = "name"`` must name the experiment it is
for). :func:`load_config` starts from a base instance (the defaults or the ``--quick`` variant) and overrides the
keys the file gives. Every problem — a missing or malformed file, an unknown key, a wrong type, a value out of
range — raises :class:`ConfigError` with one line naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from sgdstab.errors import ConfigError, ParseError
from sgdstab.utils.parsing import INT64_MAX, INT64_MIN, MAX_TEXT_CHARS, load_json_text, load_toml_text

C = TypeVar("C")

RESERVED_KEY = "experiment"
# every list in a config is looped over (runs, layers, classes): 5 million widths ran on for minutes before the
# model builder refused them; no experiment needs more than a few dozen values
MAX_LIST_LEN = 1000


def fail(message: str) -> typing.NoReturn:
    """Raise :class:`ConfigError` (for a config class's ``check``)."""
    raise ConfigError(message)


def check_device(value: str) -> None:
    """Refuse (:class:`ConfigError`) a ``device`` field that is not a torch CPU/CUDA device present on this machine."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        fail(f'config field \'device\' = {value!r} is not a torch device; write e.g. device = "cpu" or "cuda"')
    if device.type not in ("cpu", "cuda"):
        fail(f'config field \'device\' = {value!r}: experiments run on "cpu" or "cuda" devices')
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"config field 'device' = {value!r}, but this machine has no CUDA device; use device = \"cpu\"")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        fail(f"config field 'device' = {value!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")


def param(
    default: Any,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    min_len: int | None = None,
    max_len: int | None = None,
) -> Any:
    """A dataclass field with a default and its validation rules (applied to each element of a tuple field).

    A tuple field holds at most ``max_len`` values (default :data:`MAX_LIST_LEN`)."""
    rules = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    rules |= {"min_len": min_len, "max_len": max_len}
    return dataclasses.field(default=default, metadata={k: v for k, v in rules.items() if v not in (None, "")})


# ------------------------------------------------------------------------------------------- types and values
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _element_type(tp: Any) -> Any | None:
    """T for ``tuple[T, ...]``, else None."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def describe_type(tp: Any) -> str:
    base, _ = _unwrap_optional(tp)
    elem = _element_type(base)
    if elem is not None:
        word = _TYPE_WORDS.get(elem, str(elem))
        text = "a list of " + word.replace("an ", "").replace("a ", "") + "s"
        if elem is bool:
            text = "a list of true/false values"
    else:
        text = _TYPE_WORDS.get(base, str(base))
    return text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _example(name: str, tp: Any, default: Any) -> str:
    return f"{name} = {_toml_value(default)}" if default is not None else name


def _coerce_scalar(name: str, tp: Any, value: Any, hint: str) -> Any:
    coerce = _SCALAR_COERCERS.get(tp)
    if coerce is None:  # pragma: no cover - a config class with an unsupported type is a programming error
        raise TypeError(f"config field {name!r} has unsupported type {tp!r}")
    result = coerce(name, value, hint)
    if result is _WRONG_TYPE:
        raise ConfigError(
            f"config field {name!r} must be {_TYPE_WORDS[tp]}, got {value!r} ({_kind(value)}); write e.g. {hint}"
        )
    return result


_WRONG_TYPE = object()  # what a scalar coercer returns for a value of the wrong type


def _as_bool(name: str, value: Any, hint: str) -> Any:
    return value if isinstance(value, bool) else _WRONG_TYPE


def _as_int(name: str, value: Any, hint: str) -> Any:
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _int64(name, value)
    return _WRONG_TYPE


def _as_float(name: str, value: Any, hint: str) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return _WRONG_TYPE
    try:
        return float(value)
    except OverflowError:  # an int of 309+ digits (from a dict: the file parsers refuse it earlier)
        raise ConfigError(
            f"config field {name!r} must be a finite number, got an integer of {len(str(abs(value)))} "
            f"digits; write e.g. {hint}"
        ) from None


def _as_str(name: str, value: Any, hint: str) -> Any:
    return value if isinstance(value, str) else _WRONG_TYPE


_SCALAR_COERCERS: dict[type, Callable[[str, Any, str], Any]] = {
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
}


def _int64(name: str, value: int) -> int:
    # seeds, sizes and counts go to torch and numpy, which take 64-bit integers: a larger one passed validation
    # and failed after the run had started
    if not INT64_MIN <= value <= INT64_MAX:
        shown = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        raise ConfigError(f"config field {name!r} must fit in 64 bits (at most 2**63 − 1), got {shown}")
    return value


def _check_rules(name: str, value: Any, meta: Mapping[str, Any], hint: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config field {name!r} must be a finite number, got {value!r}; write e.g. {hint}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = meta.get(key)
            if bound is None:
                continue
            ok = {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[key]
            if not ok:
                raise ConfigError(
                    f"config field {name!r} must be {word} {bound:g}, got {value!r}; choose a value {word} {bound:g}"
                )
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config field {name!r} must be one of {', '.join(map(str, choices))}, got {value!r}{guess}")


def coerce_field(field: dataclasses.Field, tp: Any, value: Any) -> Any:
    """Validate one value for ``field`` (declared type ``tp``) and return it in the field's type."""
    name = field.name
    meta = field.metadata
    base, optional = _unwrap_optional(tp)
    hint = _example(name, tp, field.default if field.default is not dataclasses.MISSING else None)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config field {name!r} must be {describe_type(tp)}, got nothing; write e.g. {hint}")
    elem = _element_type(base)
    if elem is not None:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"config field {name!r} must be {describe_type(base)}, got {value!r} ({_kind(value)}); "
                f"write e.g. {hint}"
            )
        max_len = meta.get("max_len") or MAX_LIST_LEN
        if len(value) > max_len:  # before looking at the values: a long list costs time to check
            raise ConfigError(f"config field {name!r} holds {len(value)} values, more than {max_len}; give fewer")
        items = tuple(_coerce_scalar(name, elem, v, hint) for v in value)
        min_len = meta.get("min_len")
        if min_len is not None and len(items) < min_len:
            raise ConfigError(
                f"config field {name!r} needs at least {min_len} value(s), got {len(items)}; write e.g. {hint}"
            )
        for item in items:
            _check_rules(name, item, meta, hint)
        return items
    result = _coerce_scalar(name, base, value, hint)
    _check_rules(name, result, meta, hint)
    return result


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_config(cls: type[C], values: Mapping[str, Any], base: C | None = None, source: str = "config") -> C:
    """A validated instance of ``cls``: ``base`` (default: ``cls()``) with ``values`` overriding its fields.

    The key ``experiment`` is ignored here (see :func:`load_config`). Raises :class:`ConfigError`.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a table of key = value pairs, got {_kind(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    unknown = [k for k in values if k not in fields and k != RESERVED_KEY]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, list(fields), n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown config key {key!r} in {source}; {guess}valid keys: {', '.join(fields)}")
    start = base if base is not None else cls()
    merged = {name: getattr(start, name) for name in fields}
    for key, value in values.items():
        if key == RESERVED_KEY:
            continue
        if isinstance(value, Mapping):
            raise ConfigError(
                f"config field {key!r} must be {describe_type(hints[key])}, got a table; "
                "configs are flat key = value pairs"
            )
        merged[key] = value
    checked = {name: coerce_field(fields[name], hints[name], merged[name]) for name in fields}
    instance = cls(**checked)
    check = getattr(instance, "check", None)
    if callable(check):
        check()
    return instance


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The key/value table of a TOML file (or of a run's ``config.json``). Raises :class:`ConfigError`."""
    file = Path(path)
    try:
        if file.is_file() and file.stat().st_size > 4 * MAX_TEXT_CHARS:  # refused unread: a config is KiB
            raise ConfigError(f"config file {str(file)!r} is larger than {4 * MAX_TEXT_CHARS >> 20} MiB; not a config")
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r} not found; check the --config path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(file)!r} is a directory; pass a .toml file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(file)!r} cannot be read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(file)!r} is not UTF-8 text; write it as a TOML file") from None
    source = f"config file {str(file)!r}"
    try:
        if file.suffix.lower() == ".json":
            data = load_json_text(text, source)
        else:
            return load_toml_text(text, source)
    except ParseError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a JSON object of key/value pairs")
    return data


def load_config(cls: type[C], path: str | os.PathLike[str], base: C | None = None, experiment: str | None = None) -> C:
    """Read ``path`` (TOML, or JSON by suffix) and validate it against ``cls`` on top of ``base``.

    ``experiment``: the name of the experiment the file is used for; a file whose ``experiment`` key names another
    one is refused.
    """
    values = read_config_file(path)
    named = values.get(RESERVED_KEY)
    if experiment is not None and named is not None and named != experiment:
        raise ConfigError(
            f"config file {str(path)!r} is for experiment {named!r}, not {experiment!r}; "
            f"run `sgdstab experiment {named}` or remove its experiment key"
        )
    return build_config(cls, values, base, source=f"config file {str(path)!r}")


# --------------------------------------------------------------------------------------------- serialization
def config_to_dict(config: Any) -> dict[str, Any]:
    """The fields as JSON-able values (tuples become lists)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(ch in text for ch in ".eE") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string: JSON's escapes are valid TOML ones
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: Any, experiment: str | None = None, comments: bool = True) -> str:
    """A TOML text that :func:`load_config` reads back to an equal config (help texts as comments)."""
    lines = []
    if experiment is not None:
        lines.append(f"experiment = {_toml_value(experiment)}")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue  # TOML has no null: leaving the key out keeps the default
        help_text = f.metadata.get("help")
        if comments and help_text:
            lines.append(f"# {help_text}")
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (the CLI's ``--set``) as a table: VALUE is read as a TOML value (``n=500``,
    ``lrs=[0.1, 0.5]``, ``gd=false``, ``data_dir="~/cifar"``), and taken as a plain string when it is not one
    (``data_dir=/data/cifar``). Raises :class:`ConfigError` for an item without ``=`` or a repeated key."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE (e.g. --set n=500), got {item!r}")
        if key in out:
            raise ConfigError(f"--set gives {key!r} twice; give each key once")
        try:
            out[key] = load_toml_text(f"v = {value.strip()}", f"--set {key}")["v"]
        except ParseError as exc:
            if not exc.syntax:  # a limit (nesting, digits), not plain text: taking it as a string would hide that
                raise ConfigError(str(exc)) from None
            out[key] = value.strip()
    return out


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """name, type, default, rule and help of every field (for documentation and ``--help``)."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        rules = {k: v for k, v in f.metadata.items() if k != "help"}
        out.append(
            {
                "name": f.name,
                "type": describe_type(hints[f.name]),
                "default": _plain(f.default) if f.default is not dataclasses.MISSING else None,
                "rules": rules,
                "help": f.metadata.get("help", ""),
            }
        )
    return out


__all__ = [
    "ConfigError",
    "build_config",
    "check_device",
    "config_to_dict",
    "config_to_toml",
    "describe_fields",
    "fail",
    "load_config",
    "param",
    "parse_overrides",
    "read_config_file",
]
