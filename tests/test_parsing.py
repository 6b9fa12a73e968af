"""sgdstab.utils.parsing: the one guarded JSON/TOML parser. Each hostile text below broke Python's parser (a
RecursionError, a ValueError advising sys.set_int_max_str_digits) or what read its result (OverflowError, a
silent inf); each is now one ParseError naming the source, and valid text parses as json/tomllib parse it.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from sgdstab.errors import ParseError, SgdstabError
from sgdstab.utils.parsing import MAX_DEPTH, load_json_text, load_toml_text

DEEP = 100_000  # far beyond the interpreter's recursion limit


def refused(parse, text: str, match: str) -> ParseError:
    with pytest.raises(ParseError, match=match) as info:
        parse(text, "config file 'x'")
    message = str(info.value)
    assert isinstance(info.value, SgdstabError) and "\n" not in message and message.startswith("config file 'x'")
    assert len(message) < 300  # the hostile text is never echoed whole
    return info.value


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * DEEP + "]" * DEEP, "nests lists or objects too deeply"),
        ('{"a": ' + "[" * DEEP + "]" * DEEP + "}", "nests lists or objects too deeply"),
        ('{"a": ' + '{"b": ' * 50 + "1" + "}" * 50 + "}", f"deeper than {MAX_DEPTH} levels"),
        ('{"n": ' + "7" * 5000 + "}", "does not fit in 64 bits"),  # beyond Python's 4300-digit limit
        ('{"lr": ' + "1" * 401 + "}", "does not fit in 64 bits"),
        ('{"seed": 9223372036854775808}', "does not fit in 64 bits"),
        ('{"seed": -9223372036854775809}', "does not fit in 64 bits"),
        ('{"lr": 1' + "0" * 401 + ".5}", "longer than 100 characters"),
        ('{"lr": 1e401}', r"beyond the range of a float"),
        ('{"lr": -1e309}', r"beyond the range of a float"),
    ],
    ids=[
        "deep array",
        "deep value",
        "51 levels",
        "5000-digit int",
        "401-digit int",
        "2**63",
        "-2**63-1",
        "401-digit float",
        "1e401",
        "-1e309",
    ],
)
def test_hostile_json_is_one_parse_error(text, match):
    error = refused(load_json_text, text, match)
    assert not error.syntax


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a = " + "[" * DEEP + "]" * DEEP, "nests lists or tables too deeply"),
        ("a = " + "[" * 40 + "]" * 40, f"deeper than {MAX_DEPTH} levels"),
        ("n = " + "7" * 5000, "integer of thousands of digits"),
        ("lr = " + "1" * 401, "integer of 401 digits, which does not fit in 64 bits"),
        ("seed = 9223372036854775808", "integer of 19 digits, which does not fit in 64 bits"),
        ("lr = " + "1" * 401 + ".0", "longer than 100 characters"),
        ("lr = 1e401", "beyond the range of a float"),
    ],
    ids=["deep array", "41 levels", "5000-digit int", "401-digit int", "2**63", "401-digit float", "1e401"],
)
def test_hostile_toml_is_one_parse_error(text, match):
    error = refused(load_toml_text, text, match)
    assert not error.syntax


def test_malformed_text_is_a_syntax_error():
    assert refused(load_json_text, "{", "is not valid JSON: .* at line 1 column 2").syntax
    assert refused(load_toml_text, "n = [", "is not valid TOML").syntax


def test_over_long_text_is_refused_unparsed(monkeypatch):
    import sgdstab.utils.parsing as parsing

    monkeypatch.setattr(parsing, "MAX_TEXT_CHARS", 100)
    refused(load_json_text, '{"a": "' + "x" * 200 + '"}', "more than the 0 Mi read")
    refused(load_toml_text, 'a = "' + "x" * 200 + '"', "more than the 0 Mi read")
    assert load_json_text('{"a": "' + "x" * 200 + '"}', "x", max_chars=None) == {"a": "x" * 200}  # a long history


@pytest.mark.parametrize(
    "text",
    [
        '{"kind": "mlp", "input_shape": [784], "widths": [64, 64], "init_scale": 0.5, "seed": 9223372036854775807}',
        '{"a": -9223372036854775808, "b": 1.7976931348623157e308, "c": 5e-324, "d": NaN, "e": -Infinity}',
        '{"a": ' + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "}",
        "[]",
    ],
    ids=["spec", "extremes", "32 levels", "empty list"],
)
def test_valid_json_parses_as_json_does(text):
    ours, theirs = load_json_text(text, "x"), json.loads(text)
    assert json.dumps(ours) == json.dumps(theirs)


@pytest.mark.parametrize(
    "text",
    [
        'name = "q"\n[base]\nn = 64\nwidths = [16]\n[grid]\nlr = [0.05, 1e-3]\n[[runs]]\nseed = 9223372036854775807',
        "a = inf\nb = -inf\nc = nan\nd = 1_000.5\ne = -9223372036854775808\nf = 0x10",
        "a = " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1),
    ],
    ids=["sweep", "extremes", "32 levels"],
)
def test_valid_toml_parses_as_tomllib_does(text):
    assert repr(load_toml_text(text, "x")) == repr(tomllib.loads(text))


def test_limits_can_be_lifted_for_files_sgdstab_only_inspects():
    deep = "[" * 60 + "]" * 60
    assert load_json_text(deep, "x", max_depth=None) == json.loads(deep)
    assert load_json_text('{"a": 99999999999999999999999}', "x", int64=False) == {"a": 99999999999999999999999}
    # the recursion guard and Python's digit limit hold even then
    with pytest.raises(ParseError, match="too deeply"):
        load_json_text("[" * DEEP + "]" * DEEP, "x", max_depth=None, int64=False)
    with pytest.raises(ParseError, match="integer of thousands of digits, which cannot be read"):
        load_json_text("7" * 5000, "x", int64=False)
