"""One guarded parser for the JSON and TOML text users give sgdstab (model specs, experiment and sweep configs,
``--set`` values): every way such text can break the parser or what reads it ends in one :class:`ParseError`.

Python's parsers leave three holes that user text reaches: nesting deeper than the interpreter's recursion limit
raises ``RecursionError`` (100000 ``[`` is enough); an integer of more than 4300 digits raises a ``ValueError``
that advises ``sys.set_int_max_str_digits``; a float literal beyond ±1.8e308 silently becomes ``inf`` and an
integer of 401 digits overflows ``float()`` (``OverflowError``) later, in whatever converts it. Here:

- nesting: refused when the parser recurses too deep, and when the parsed value nests deeper than ``max_depth``
  (default :data:`MAX_DEPTH`; configs and specs are flat tables of numbers, strings and lists);
- integers: every one must fit in 64 bits (TOML's own rule, and torch's and numpy's: seeds, sizes and counts);
  one of more than 4300 digits, which Python refuses to convert, is named as such;
- floats: a literal longer than :data:`MAX_NUMBER_CHARS` characters, or one that overflows to ±inf, is refused;
  the literals ``inf``/``nan`` (TOML) and ``Infinity``/``NaN`` (JSON) pass, for the reader to refuse by field;
- size: text longer than :data:`MAX_TEXT_CHARS` characters is refused unparsed.

A :class:`ParseError` carries ``syntax=True`` when the text is simply not JSON/TOML (the ``--set`` reader then
takes it as a plain string) and ``syntax=False`` for a limit.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

from sgdstab.errors import ParseError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "MAX_TEXT_CHARS", "ParseError", "load_json_text", "load_toml_text"]

MAX_DEPTH = 32  # a config is a table of scalars and lists (depth 2); a sweep adds [grid] and [[runs]] (depth 3)
MAX_NUMBER_CHARS = 100  # float64 needs at most 17 significant digits; 100 leaves room for any sane spelling
MAX_TEXT_CHARS = 16 << 20  # configs and specs are KiB; a sweep's [[runs]] list of 100000 runs is a few MiB
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_NON_FINITE = frozenset({"inf", "+inf", "-inf", "nan", "+nan", "-nan", "infinity", "-infinity"})


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _float_literal(source: str) -> Any:
    """A float parser for json/tomllib: refuses over-long literals and literals that overflow to ±inf."""

    def parse(text: str) -> float:
        if text.lower() in _NON_FINITE:
            return float(text)
        if len(text) > MAX_NUMBER_CHARS:
            raise ParseError(
                f"{source} holds the number {_short(text)!r}, longer than {MAX_NUMBER_CHARS} characters; "
                "write it with an exponent (e.g. 1.5e-3)"
            )
        value = float(text.replace("_", ""))
        if not math.isfinite(value):
            raise ParseError(f"{source} holds the number {_short(text)!r}, beyond the range of a float (±1.8e308)")
        return value

    return parse


def _walk(value: Any, source: str, max_depth: int | None, int64: bool) -> None:
    """Depth and integer range of a parsed value, iteratively (a deep value must not recurse here either); each
    container is scanned by C-level built-ins (``map(type)``, ``min``/``max``), so a flat list of millions of
    numbers costs a fraction of its parsing."""
    stack: list[tuple[Any, int]] = [([value], -1)]
    while stack:
        item, depth = stack.pop()
        if max_depth is not None and depth >= max_depth:
            raise ParseError(
                f"{source} nests lists or tables deeper than {max_depth} levels; sgdstab reads flat tables"
            )
        children = list(item.values()) if isinstance(item, dict) else item
        kinds = set(map(type, children))
        if dict in kinds or list in kinds:
            stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
        if int64 and int in kinds:
            ints = children if kinds == {int} else [child for child in children if type(child) is int]
            for extreme in (min(ints), max(ints)):
                if not INT64_MIN <= extreme <= INT64_MAX:
                    digits = len(str(abs(extreme)))  # ≤ 4300 digits here: Python parsed it
                    raise ParseError(f"{source} holds an integer of {digits} digits, which does not fit in 64 bits")


def _check_size(text: str, source: str, max_chars: int | None) -> None:
    limit = MAX_TEXT_CHARS if max_chars == -1 else max_chars  # -1: the module's limit, read when called
    if limit is not None and len(text) > limit:
        raise ParseError(f"{source} is {len(text)} characters long, more than the {limit >> 20} Mi read")


def load_json_text(
    text: str, source: str, *, max_depth: int | None = MAX_DEPTH, int64: bool = True, max_chars: int | None = -1
) -> Any:
    """``text`` parsed as JSON, within this module's limits; raises :class:`ParseError` naming ``source``.

    ``max_depth=None``, ``int64=False`` and ``max_chars=None`` lift those limits (for files sgdstab wrote or only
    inspects: a torch.export program's JSON, a long training history); nesting beyond the interpreter's recursion
    limit and numbers beyond Python's digit limit are refused either way. ``max_chars=-1``: :data:`MAX_TEXT_CHARS`.
    """
    _check_size(text, source, max_chars)
    try:
        value = json.loads(text, parse_float=_float_literal(source))
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", syntax=True
        ) from None
    except RecursionError:
        raise ParseError(f"{source} nests lists or objects too deeply to be read; sgdstab reads flat tables") from None
    except ParseError:
        raise
    except ValueError:  # an integer beyond Python's 4300-digit limit
        why = "does not fit in 64 bits" if int64 else "cannot be read"
        raise ParseError(f"{source} holds an integer of thousands of digits, which {why}") from None
    _walk(value, source, max_depth, int64)
    return value


def load_toml_text(text: str, source: str, *, max_depth: int | None = MAX_DEPTH) -> dict[str, Any]:
    """``text`` parsed as TOML, within this module's limits (integers are 64-bit, as TOML requires); raises
    :class:`ParseError` naming ``source``."""
    _check_size(text, source, -1)
    try:
        value = tomllib.loads(text, parse_float=_float_literal(source))
    except tomllib.TOMLDecodeError as exc:
        raise ParseError(f"{source} is not valid TOML: {exc}", syntax=True) from None
    except RecursionError:
        raise ParseError(f"{source} nests lists or tables too deeply to be read; sgdstab reads flat tables") from None
    except ParseError:
        raise
    except ValueError:  # tomllib's int() of more than 4300 digits
        raise ParseError(f"{source} holds an integer of thousands of digits, which does not fit in 64 bits") from None
    _walk(value, source, max_depth, True)
    return value
