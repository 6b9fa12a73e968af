"""A saved model, read safely: its architecture from a :class:`sgdstab.ModelSpec` (JSON) and its weights
from a checkpoint file, never by unpickling code.

Checkpoint formats (the state_dict of a model, or just its parameters):

- ``torch.save(model.state_dict(), path)`` — read with ``torch.load(path, weights_only=True)``, which refuses any
  pickle that would build other objects than tensors, numbers, strings and containers (so code in a crafted pickle
  never runs); also accepted: a dict holding the state dict under ``"state_dict"``, and the training checkpoints
  of :func:`sgdstab.train` (``format = "sgdstab-train-checkpoint"``, parameters under ``"parameters"``);
- safetensors (``safetensors.torch.save_file``), recognised by its header (an 8-byte little-endian length followed
  by a JSON object); needs the ``safetensors`` package.

A state dict saved from the bare layers (``nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 1))``: keys
``0.weight``, …) fits the spec's model although that wraps them (``net.0.weight``): names are matched up to a
common prefix (also ``module.`` from DataParallel and ``_orig_mod.`` from ``torch.compile``).

A program saved with ``torch.export.save`` (``.pt2``) carries its own architecture: :func:`load_program` reads it
without a spec. A plain ``torch.export.load`` runs code from the file (pickles loaded with ``weights_only=False``,
objects unpickled, symbolic shapes evaluated by ``sympy.sympify``, guard code compiled by ``ep.module()``, compiled
libraries), so the archive is checked first and the load runs under a guard (the comment above
:func:`load_program`'s helpers lists each route and how it is closed): no code from the file runs.

Every problem (missing or truncated file, a pickle carrying code, a program that would run code, a state dict of
another architecture) raises :class:`ModelFileError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import re
import struct
import threading
import tokenize
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sgdstab.errors import ModelFileError, ParseError
from sgdstab.models.architectures import ModelSpec, build_model
from sgdstab.utils.parsing import MAX_TEXT_CHARS, load_json_text

TRAIN_CHECKPOINT_FORMAT = "sgdstab-train-checkpoint"  # of sgdstab.training.checkpoint, which takes this constant


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any]) -> ModelSpec:
    """A :class:`ModelSpec` from a dict, a JSON object string or a JSON file holding one."""
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(spec)
    text = os.fspath(spec)
    source = "--model"
    if not text.lstrip().startswith(("{", "[")):  # a JSON value, else the path of a file holding one
        path = Path(text)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            is_file = False
        if not is_file:
            raise ModelFileError(
                f"model spec {_short(text)!r} is neither a JSON object nor an existing JSON file; pass e.g. "
                '\'{"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [64]}\''
            )
        source = f"model spec file {str(path)!r}"
        text = _read_text(path, source)
    try:
        data = load_json_text(text, source)
    except ParseError as exc:
        raise ModelFileError(str(exc)) from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{source} must hold a JSON object (the ModelSpec fields), got {type(data).__name__}")
    return ModelSpec.from_dict(data)


def _unreadable(source: str, exc: OSError) -> ModelFileError:
    """The one-line error for a file the OS will not let us read (permission, a directory, an I/O error)."""
    if isinstance(exc, PermissionError):
        return ModelFileError(f"cannot read {source}: permission denied; check the file's permissions (chmod u+r)")
    return ModelFileError(f"cannot read {source}: {_one_line(exc.strerror or str(exc))}")


def _read_text(path: Path, source: str) -> str:
    """A small UTF-8 file (a spec), refused unread when larger than a spec can be."""
    try:
        if path.stat().st_size > 4 * MAX_TEXT_CHARS:
            raise ModelFileError(f"{source} is larger than {4 * MAX_TEXT_CHARS >> 20} MiB; it is not a model spec")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _unreadable(source, exc) from None
    except UnicodeDecodeError:
        raise ModelFileError(f"cannot read {source}: it is not UTF-8 text (a JSON object is)") from None


def _read_head(path: Path, source: str, count: int) -> bytes:
    """The first ``count`` bytes of ``path``: opening it here turns a permission error into one line before any
    loader (torch.load, zipfile) sees the file."""
    try:
        with path.open("rb") as handle:
            return handle.read(count)
    except OSError as exc:
        raise _unreadable(source, exc) from None


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (see the module docstring), on the CPU; never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {str(path)!r} does not exist or is not a file")
    size = path.stat().st_size
    head = _read_head(path, f"checkpoint {str(path)!r}", 9)
    if _is_safetensors(head, size):
        state: Any = _read_safetensors(path)
    else:
        try:
            with warnings.catch_warnings():  # torch's own deprecation notes (quantized storages) are not ours to print
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except PermissionError as exc:  # the permission changed after the head was read
            raise _unreadable(f"checkpoint {str(path)!r}", exc) from None
        except Exception as exc:  # truncated zip, a pickle with code (refused unrun), anything else unreadable
            first = _one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            raise ModelFileError(
                f"cannot read checkpoint {str(path)!r}: truncated, corrupt, or holding more than tensors "
                f"(weights_only loading refuses pickled code) ({type(exc).__name__}: {first[:200]})"
            ) from None
    if isinstance(state, Mapping) and state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        state = state.get("parameters")
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ModelFileError(f"checkpoint {str(path)!r} holds no state dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        kind = type(state[bad[0]]).__name__ if bad[0] in state else "a key that is not a string"
        raise ModelFileError(
            f"checkpoint {str(path)!r}: entry {bad[0][:80]!r} is not a named tensor ({kind}); save a flat "
            "state dict of tensors"
        )
    for name, value in state.items():
        check_weight_tensor(f"checkpoint {str(path)!r}", name, value)
    return dict(state)


# the dtypes a weight may have: a real float the model can be converted to (float16/bfloat16 are then refused by
# the Problem with their own message), or an integer/bool buffer; complex (analysed as its real part), float8 and
# the quantized/bit dtypes are not model weights sgdstab can use
_WEIGHT_DTYPES = frozenset(
    {torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool}
    | {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
)


def check_weight_tensor(source: str, name: str, value: Tensor) -> None:
    """Refuse (:class:`ModelFileError`, naming ``name`` and what it is) a tensor that is not dense real data in
    memory: a meta tensor (no data), a sparse one (COO, CSR, …), a quantized one, or a dtype outside
    :data:`_WEIGHT_DTYPES` (complex, float8, …)."""
    shown = f"{source}: {name[:80]!r}"
    if value.is_meta:
        raise ModelFileError(f"{shown} is a meta tensor (a shape without data); save the model's real weights")
    if value.layout != torch.strided:
        raise ModelFileError(f"{shown} has layout {value.layout} (sparse); save dense tensors (tensor.to_dense())")
    if value.is_quantized:
        raise ModelFileError(f"{shown} is quantized ({value.dtype}); save the float weights (tensor.dequantize())")
    if value.dtype not in _WEIGHT_DTYPES:
        raise ModelFileError(
            f"{shown} has dtype {value.dtype}, which is not a real float32/float64 weight; save the model in "
            "float32 or float64"
        )


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ModelFileError(
            f"checkpoint {str(path)!r} is a safetensors file; reading it needs the safetensors package "
            "(pip install safetensors)"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read safetensors checkpoint {str(path)!r}: {_one_line(str(exc))[:200]}") from None


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def _common_prefix(names: list[str]) -> str:
    """The longest dotted prefix (ending in '.') shared by every name, '' if none."""
    parts = [name.split(".")[:-1] for name in names]
    prefix: list[str] = []
    for segment in zip(*parts, strict=False):
        if len(set(segment)) != 1:
            break
        prefix.append(segment[0])
    return "".join(p + "." for p in prefix)


def _align_names(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with its names mapped onto the model's when they differ only by a common prefix: wrapper prefixes
    stripped, then the state's common prefix replaced by the model's (``0.weight`` → ``net.0.weight``)."""
    if set(state) <= set(expected):
        return dict(state)
    renamed = dict(state)
    for wrapper in _WRAPPER_PREFIXES:
        if renamed and all(k.startswith(wrapper) for k in renamed):
            renamed = {k[len(wrapper) :]: v for k, v in renamed.items()}
    if set(renamed) <= set(expected):
        return renamed
    theirs, ours = _common_prefix(list(renamed)), _common_prefix(list(expected))
    moved = {ours + k[len(theirs) :]: v for k, v in renamed.items()}
    return moved if set(moved) <= set(expected) else dict(state)


def _expected_names(model: nn.Module, limit: int = 6) -> str:
    names = [name for name, _ in model.named_parameters()]
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``model`` (strictly: every parameter present with its shape, nothing unknown) and return
    it, converted to the checkpoint's floating dtype. Names may differ by a common prefix (module docstring).
    Buffers the checkpoint lacks (e.g. the frozen features of ``random_features``, rebuilt from the spec's seed)
    keep the model's values.

    Raises:
        ModelFileError: a name the model has not, a missing parameter (both name the expected ones), a shape or
            dtype that does not fit, non-finite values.
    """
    expected = model.state_dict()
    state = _align_names(state, expected)
    params = [name for name, _ in model.named_parameters()]  # in module order: the first missing one is named
    unknown = [k for k in state if k not in expected]
    missing = [k for k in params if k not in state]
    if unknown or missing:
        what = f"has {unknown[0]!r}, which the model has not" if unknown else f"lacks the parameter {missing[0]!r}"
        raise ModelFileError(
            f"{source} does not fit the model spec: it {what}; the spec's model has {_expected_names(model)}. "
            "Save the state dict of the model the spec builds (sgdstab.build_model), or check the spec's widths "
            "and kind; a program saved with torch.export needs no spec (--program)"
        )
    for name, value in state.items():
        if not isinstance(value, Tensor):
            raise ModelFileError(f"{source}: entry {str(name)[:80]!r} is not a tensor ({type(value).__name__})")
        check_weight_tensor(source, name, value)
        if value.shape != expected[name].shape:
            raise ModelFileError(
                f"{source} does not fit the model spec: {name!r} has shape {tuple(value.shape)}, the model's is "
                f"{tuple(expected[name].shape)}"
            )
        if expected[name].is_floating_point() and not value.is_floating_point():
            # load_state_dict would cast it (0.7 saved as int is 0): a silently different model
            raise ModelFileError(
                f"{source}: {name!r} has dtype {value.dtype}, but the model's is floating point; save float weights"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{source}: {name!r} holds non-finite values")
    dtypes = {v.dtype for k, v in state.items() if k in params and v.is_floating_point()}
    if len(dtypes) > 1:
        raise ModelFileError(f"{source} mixes parameter dtypes {sorted(map(str, dtypes))}; save one dtype")
    if dtypes:
        model = model.to(dtypes.pop())
    model.load_state_dict(dict(state), strict=False)
    return model


# --------------------------------------------------------------------------------------- torch.export programs
# torch.export.load (torch 2.13) runs code from the file on five routes, each closed here:
# 1. torch.load(weights_only=False) on weights/constants flagged use_pickle and, as a fallback, on the sample inputs;
# 2. pickle.loads / torch._C._pickle_load_obj on opaque_obj_* / custom_obj_* constants;
# 3. sympy.sympify (an eval) on every symbolic-shape string ("expr_str") of the program's JSON;
# 4. exec of the program's "guards_code" strings when ep.module() builds its guard function (check_guards=True);
# 5. a compiled AOTInductor library (data/aotinductor/) loaded next to the program.
# So: only known members (5), use_pickle false and tensor payloads only (1, 2), every string of the JSON checked by
# its field (3; names are plain identifiers, so none can reach FX's generated code), module(check_guards=False) (4),
# and during the load torch.load is forced to weights_only=True, raw unpickling raises and sympify checks its input.
_MEMBER = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/\w+\.json"
    r"|data/weights/(weight_\d+|\w+_weights_config\.json)|data/constants/(tensor_\d+|\w+_constants_config\.json)"
    r"|data/sample_inputs/\w+\.pt|extra/[\w.\-]+)",
    re.ASCII,
)
_NAME = re.compile(r"[\w.\-+:]*", re.ASCII)  # names, targets, dtypes, versions: no quote, bracket or space
_META = re.compile(r"[\w .,;:\-+\[\](){}\"'=]*", re.ASCII)  # metadata stored on nodes, never compiled
_META_FIELDS = frozenset(
    {"nn_module_stack", "torch_fn", "source_fn_stack", "custom", "from_node", "in_spec", "out_spec"}
)
_FREE_FIELDS = frozenset({"stack_trace", "guards_code"})  # shown in messages only / never compiled (check 4)
_SYM_NAMES = frozenset(
    {"Symbol", "Integer", "Float", "Rational", "True", "False", "positive", "integer", "real", "nonnegative"}
    | {"negative", "finite", "zero", "oo", "Max", "Min", "Abs", "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt"}
    | {"Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise"}
)
_SYM_OPS = frozenset(["(", ")", ",", "=", "+", "-", "*", "/", "//", "%", "**", "<", ">", "<=", ">=", "==", "!="])
_SYMBOL = re.compile(r"[a-z]+\d+", re.ASCII)  # torch's shape symbols: s0, u3, zf1, ...
_MAX_JSON_BYTES = 256 << 20  # a program's JSON is KiB to MiB; more is refused unread
_PROGRAM_LOCK = threading.Lock()  # the guard patches module attributes: one load at a time


def _sympy_names() -> frozenset[str]:
    """The names a symbolic-shape string may use: sympy's constructors above and torch's shape functions."""
    import torch.utils._sympy.functions as functions

    return _SYM_NAMES | {name for name, value in vars(functions).items() if isinstance(value, type)}


def _check_sym_expr(text: str) -> None:
    """Refuse a symbolic-shape string that is more than sympy constructors, shape symbols and arithmetic (sympify
    evaluates it as Python: no attribute, call of a builtin, or string beyond a symbol name may pass)."""
    if len(text) > 4096:
        raise ValueError(f"symbolic expression {text[:60]!r}… is longer than 4096 characters")
    names = _sympy_names()
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise ValueError(f"unreadable symbolic expression {text[:60]!r}") from None
    for token in tokens:
        kind, value = token.type, token.string
        ok = (
            kind in (tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (kind == tokenize.NAME and (value in names or _SYMBOL.fullmatch(value) is not None))
            or (kind == tokenize.OP and value in _SYM_OPS)
            or (kind == tokenize.STRING and value[:1] in "'\"" and _SYMBOL.fullmatch(value[1:-1]) is not None)
        )
        if not ok:
            raise ValueError(f"symbolic expression {text[:60]!r} holds {value[:30]!r}, which is not shape arithmetic")


def _check_strings(node: Any, field: str = "") -> None:
    """Every string (and key) of a program's JSON against the rule of its field (module comment above)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str) or _NAME.fullmatch(key) is None:
                raise ValueError(f"the name {str(key)[:60]!r} under {field or 'the top'!r} is not a plain identifier")
            _check_strings(value, key)
    elif isinstance(node, list):
        for value in node:
            _check_strings(value, field)
    elif isinstance(node, str) and field not in _FREE_FIELDS:
        if field == "expr_str":
            _check_sym_expr(node)
        elif _META.fullmatch(node) is None if field in _META_FIELDS else _NAME.fullmatch(node) is None:
            raise ValueError(f"field {field!r} holds {node[:60]!r}, which is not a plain name")


def _check_payloads(source: str, name: str, raw: bytes) -> None:
    """A weights/constants config: every entry a raw tensor (no pickle, no object)."""
    try:
        config = _program_json(raw, f"{source}: {name!r}").get("config", {})
    except (ParseError, AttributeError, UnicodeDecodeError):
        raise ModelFileError(f"{source}: {name!r} is not a valid payload config") from None
    if not isinstance(config, dict):
        raise ModelFileError(f"{source}: {name!r} is not a valid payload config")
    for fqn, meta in config.items():
        if not isinstance(meta, dict):
            raise ModelFileError(f"{source}: {name!r} has a malformed entry for {str(fqn)[:60]!r}")
        if meta.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", str(meta.get("path_name", ""))):
            raise ModelFileError(
                f"{source}: {str(fqn)[:60]!r} is stored as a pickled object, which would run code on loading; "
                "only tensors are accepted"
            )


def _program_json(raw: bytes, source: str) -> Any:
    """A program's JSON member, parsed with the shared guards but no depth or 64-bit limit (torch writes it; the
    guards keep its nesting and digits from raising anything but ParseError)."""
    return load_json_text(raw.decode("utf-8"), source, max_depth=None, int64=False)


def _check_archive(path: Path) -> None:
    """Refuse a .pt2 archive holding anything ``torch.export.load`` would run as code (comment above)."""
    source = f"program {str(path)!r}"
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{source} is not a torch.export archive (a .pt2 zip file from torch.export.save)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
            members = [n[len(root) :] if n.startswith(root) else n for n in names]
            unknown = [n for n in members if _MEMBER.fullmatch(n) is None]
            if unknown:
                raise ModelFileError(
                    f"{source} holds {unknown[0][:80]!r}, which is not part of an exported program (a legacy "
                    "pickled payload, a compiled library or a pickled object): export it again with "
                    "torch.export.save from a plain nn.Module"
                )
            infos = {m: archive.getinfo(n) for m, n in zip(members, names, strict=True) if m.endswith(".json")}
            large = [m for m, info in infos.items() if info.file_size > _MAX_JSON_BYTES]
            if large:
                raise ModelFileError(f"{source}: {large[0]!r} is larger than {_MAX_JSON_BYTES >> 20} MiB of JSON")
            texts = {m: archive.read(info) for m, info in infos.items()}
    except (zipfile.BadZipFile, OSError, KeyError, EOFError) as exc:
        raise ModelFileError(f"cannot read {source}: {_one_line(str(exc))[:200]}") from None
    if not any(m.startswith("models/") for m in texts):
        raise ModelFileError(f"{source} holds no exported program (no models/*.json); save it with torch.export.save")
    for name, raw in texts.items():
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            _check_payloads(source, name, raw)
        try:
            _check_strings(_program_json(raw, f"{source}: {name!r}"))
        except (ParseError, UnicodeDecodeError, RecursionError):
            raise ModelFileError(f"{source}: {name!r} is not valid JSON") from None
        except ValueError as exc:
            raise ModelFileError(f"{source}: {name!r}: {exc}; refused, as loading could run it as code") from None


@contextlib.contextmanager
def _no_code_from_the_file() -> Iterator[None]:
    """Within: every ``torch.load`` is ``weights_only=True``, raw unpickling of objects raises, ``sympy.sympify``
    takes only shape arithmetic, and torch.export's logged tracebacks are silenced (the error says it in one line)."""
    import sympy

    originals = (torch.load, pickle.loads, getattr(torch._C, "_pickle_load_obj", None), sympy.sympify)
    logger = logging.getLogger("torch.export")
    level = logger.level

    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return originals[0](*args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refused: the archive asks to unpickle an arbitrary object")

    def safe_sympify(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_sym_expr(value)
        return originals[3](value, *args, **kwargs)

    with _PROGRAM_LOCK:
        torch.load, pickle.loads, sympy.sympify = safe_load, refuse, safe_sympify  # type: ignore[assignment]
        if originals[2] is not None:
            torch._C._pickle_load_obj = refuse  # type: ignore[attr-defined]
        logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            torch.load, pickle.loads, sympy.sympify = originals[0], originals[1], originals[3]  # type: ignore[assignment]
            if originals[2] is not None:
                torch._C._pickle_load_obj = originals[2]  # type: ignore[attr-defined]
            logger.setLevel(level)


def load_program(path: str | os.PathLike[str]) -> nn.Module:
    """The model of a program saved with ``torch.export.save`` (``.pt2``), as an ``nn.Module`` whose parameters are
    the exported ones; no spec needed and no code from the file runs (module docstring). Export it with a dynamic
    batch dimension, ``dynamic_shapes=({0: torch.export.Dim("batch")},)``, so that it runs on any number of samples.

    Raises:
        ModelFileError: not a file, not a torch.export archive, anything that would run as code (a pickled payload,
            a compiled library, a symbolic shape or name that is not plain), or an archive torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"program {str(path)!r} does not exist or is not a file")
    _read_head(path, f"program {str(path)!r}", 4)  # permission: one line (root passes os.access, not the open)
    _check_archive(path)
    try:
        with _no_code_from_the_file():
            module = torch.export.load(path).module(check_guards=False)  # guards_code is never compiled
    except Exception as exc:  # a refusal of the guard, or an archive torch cannot read
        first = _one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        raise ModelFileError(
            f"cannot load program {str(path)!r}: {type(exc).__name__}: {first[:200]} (only tensor payloads and plain "
            "shape arithmetic load)"
        ) from None
    return module


def load_model(
    spec: str | os.PathLike[str] | Mapping[str, Any] | ModelSpec, checkpoint: str | os.PathLike[str]
) -> nn.Module:
    """Build the model of ``spec`` and load the weights of ``checkpoint`` into it (eval mode)."""
    model_spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    model = build_model(model_spec)
    state = read_state_dict(checkpoint)
    model = load_weights(model, state, source=f"checkpoint {os.fspath(checkpoint)!r}")
    return model.eval()


def program_input_shape(module: nn.Module) -> tuple[int | None, ...] | None:
    """The shape one input of an exported program's module takes, symbolic sizes as None (its first placeholder's
    recorded value); None when the module is not from torch.export or has no such record."""
    graph = getattr(module, "graph", None)
    for node in getattr(graph, "nodes", ()):
        if node.op == "placeholder":
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is None:
                return None
            return tuple(d if isinstance(d, int) else None for d in shape)
    return None


def fit_inputs(module: nn.Module, X: Tensor) -> tuple[Tensor, str | None]:
    """X reshaped to what an exported program takes, when it takes flat samples of X's size ((n, 1, 28, 28) images
    for a program exported on (n, 784) inputs); returns (X, a note saying so, or None)."""
    shape = program_input_shape(module)
    if shape is None or len(shape) != 2 or X.ndim <= 2:
        return X, None
    width = 1
    for d in X.shape[1:]:
        width *= int(d)
    if shape[1] is not None and shape[1] != width:
        return X, None
    return X.reshape(len(X), -1), f"inputs flattened from {tuple(X.shape[1:])} to ({width},), as the program takes"


__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "ModelFileError",
    "check_weight_tensor",
    "fit_inputs",
    "load_model",
    "load_program",
    "load_spec",
    "load_weights",
    "read_state_dict",
]
