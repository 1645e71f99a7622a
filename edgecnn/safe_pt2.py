"""Load a `.pt2` (torch.export archive) without ever running code from the file.

`torch.export.load` is not safe on untrusted input: it unpickles entries
marked `use_pickle` with `weights_only=False`, retries the sample inputs with
`weights_only=False` when the safe load fails, unpickles opaque and
TorchBind constants, evaluates every symbolic-shape expression with
`sympy.sympify` (which calls `eval`), resolves node targets by name anywhere
under `torch` (`torch.hub.load` included), and `ExportedProgram.module()`
`exec`s the archive's `guards_code`. So before torch sees the file, the
archive is checked against what edgecnn's own programs hold:

- a zip of the current format (`<root>/models/NAME.json`), sizes bounded;
- no pickled payload: every weight and constant is a raw tensor
  (`use_pickle` false), no custom or opaque objects, and the sample inputs
  load with `weights_only=True`;
- every graph node calls `torch.ops.aten.*`, `torch.ops.quantized_decomposed.*`,
  `_operator.getitem` or one of `SYM_TARGETS`: the integer arithmetic torch.export writes
  for a shape computed from the dynamic batch (`x.reshape(n * 2, ...)` with n =
  x.shape[0], as MobileViT's unfold and multi-head splits do). These are safe: each is
  an exact name (not a prefix) in torch's own table of symbolic ops (`_SYM_OPS` of
  torch._export.serde.serialize), which its loader resolves by attribute lookup on the
  `operator` / `math` / `torch` module to that pure built-in (`operator.mul`,
  `torch.sym_max`, ...); it computes on the program's own integers and imports,
  evaluates or unpickles nothing;
- every symbolic expression is built from symbols, integers and the
  arithmetic sympy names torch writes; `guards_code` is empty.

Anything else is refused with one line. torch itself then loads the archive
with `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` (belt and braces) and its own log
warnings silenced (they print tracebacks).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecnn.errors import EdgecnnError
from edgecnn.util import require_file

#: Refuse archives whose entries expand beyond this (a zip bomb), and JSON entries beyond
#: MAX_JSON_BYTES (the graph of a large zoo model is a few MB).
MAX_ARCHIVE_BYTES = 4 * 2**30
MAX_JSON_BYTES = 256 * 2**20

#: symbolic-int (and -bool / -float) arithmetic: torch 2.13's `_SYM_OPS` as its serializer
#: names them (`module.name`); see the module docstring for why loading them is safe
SYM_TARGETS = frozenset({
    *(f"_operator.{name}" for name in (
        "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "pow",
        "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "lshift", "rshift")),
    "math.trunc", "torch.sym_not", "torch.sym_int", "torch.sym_float", "torch.sym_ite",
    "torch.sym_max", "torch.sym_min", "torch._sym_sqrt"})
ALLOWED_TARGETS = re.compile(r"^(torch\.ops\.(aten|quantized_decomposed)\.[A-Za-z0-9_]+"
                             r"\.[A-Za-z0-9_]+|_operator\.getitem|"
                             + "|".join(re.escape(t) for t in sorted(SYM_TARGETS)) + ")$")
#: Tokens a symbolic-shape expression may contain: symbols (s0, u3), integers, the sympy
#: names torch's serializer writes, operators. Nothing else reaches `sympify`.
#: (srepr: Add / Mul / Pow / Rational for the arithmetic of `SYM_TARGETS`, torch's own
#: functions for division, powers, shifts and casts, sympy's relationals for comparisons)
_EXPR_NAMES = {"Symbol", "Integer", "positive", "integer", "nonnegative", "True", "False",
               "oo", "FloorDiv", "Mod", "CeilToInt", "FloorToInt", "CleanDiv", "CeilDiv",
               "PythonMod", "Max", "Min", "Eq", "Ne", "And", "Or", "Not",
               "Add", "Mul", "Pow", "Rational", "IntTrueDiv", "FloatTrueDiv", "ToFloat",
               "TruncToInt", "PowByNatural", "FloatPow", "LShift", "RShift", "Equality",
               "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan"}
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<num>\d+)|"
                         r"(?P<sym>'[su]\d+')|(?P<op>\*\*|[-+*/%(),=<>!]))")
_SYMBOL = re.compile(r"^[su]\d+$")


def _check_expr(text: str, where: str) -> None:
    pos = 0
    while pos < len(text):
        match = _EXPR_TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise EdgecnnError(f"{where}: symbolic expression {text[:60]!r} is not a plain "
                               "shape expression; refusing to evaluate it")
        name = match.group("name")
        if name and name not in _EXPR_NAMES and not _SYMBOL.match(name):
            raise EdgecnnError(f"{where}: symbolic expression uses {name!r}; "
                               "refusing to evaluate it")
        pos = match.end()


def _walk(value: Any, where: str, depth: int = 0) -> None:
    """Check node targets and symbolic expressions anywhere in the serialized program."""
    if depth > 200:
        raise EdgecnnError(f"{where}: the serialized program is nested too deeply")
    if isinstance(value, dict):
        target = value.get("target")
        if isinstance(target, str) and "inputs" in value and not ALLOWED_TARGETS.match(target):
            raise EdgecnnError(f"{where}: node calls {target[:80]!r}; edgecnn loads programs "
                               "of aten and quantized_decomposed ops (and shape arithmetic) "
                               "only")
        expr = value.get("expr_str")
        if isinstance(expr, str):
            _check_expr(expr, where)
        for item in value.values():
            _walk(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk(item, where, depth + 1)


def _read_json(archive: zipfile.ZipFile, name: str, where: str) -> Any:
    if archive.getinfo(name).file_size > MAX_JSON_BYTES:
        raise EdgecnnError(f"{where}: entry {name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(archive.read(name).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgecnnError(f"{where}: entry {name} is not valid JSON "
                           f"({type(exc).__name__})") from None


def _load_tensors_only(data: bytes) -> None:
    import torch

    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def check_archive(path: Path) -> None:
    """Raise `EdgecnnError` unless `path` is a .pt2 archive that loads without running code."""
    where = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise EdgecnnError(f"{where}: not a torch.export archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        if sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
            raise EdgecnnError(f"{where}: archive expands beyond "
                               f"{MAX_ARCHIVE_BYTES >> 30} GiB")
        names = [i.filename for i in infos]
        models = [n for n in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
        if not models:
            raise EdgecnnError(f"{where}: not a torch.export archive of the current format "
                               "(no <root>/models/NAME.json)")
        root = models[0].split("/")[0]
        for name in names:
            if not name.startswith(f"{root}/"):
                raise EdgecnnError(f"{where}: unexpected entry {name!r} outside {root}/")
        try:
            for model in models:
                program = _read_json(archive, model, where)
                if not isinstance(program, dict):
                    raise EdgecnnError(f"{where}: {model} is not a serialized program")
                if program.get("guards_code"):
                    raise EdgecnnError(f"{where}: {model} carries guards_code (Python source "
                                       "torch would exec); refusing it")
                _walk(program, where)
            for name in names:
                if re.search(r"/data/(weights|constants)/[^/]*_config\.json$", name):
                    config = _read_json(archive, name, where)
                    entries = config.get("config", {}) if isinstance(config, dict) else None
                    if not isinstance(entries, dict):
                        raise EdgecnnError(f"{where}: {name} is not a payload config")
                    for fqn, meta in entries.items():
                        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
                            raise EdgecnnError(f"{where}: {fqn!r} in {name} is a pickled object; "
                                               "edgecnn loads raw tensors only")
                elif re.search(r"/data/constants/(custom_obj|opaque_obj)", name):
                    raise EdgecnnError(f"{where}: entry {name} is a pickled object; "
                                       "edgecnn loads raw tensors only")
                elif "/data/sample_inputs/" in name:
                    try:
                        _load_tensors_only(archive.read(name))
                    except Exception as exc:  # noqa: BLE001 - any refusal by the safe unpickler
                        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() \
                            else type(exc).__name__
                        raise EdgecnnError(f"{where}: entry {name} is not tensors-only "
                                           f"({first})") from None
        except (zipfile.BadZipFile, OSError, EOFError, KeyError, RuntimeError) as exc:
            raise EdgecnnError(f"{where}: corrupt torch.export archive ({exc})") from None


@contextlib.contextmanager
def _torch_quiet_and_safe() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export",
                                              "torch.export._trace",
                                              "torch._export.serde.serialize")]
    levels = [lg.level for lg in loggers]
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def read_extra_file(path: Path | str, key: str) -> str | None:
    """The text of `extra_files[key]` of a `torch.export.save` archive (`<root>/extra/<key>`),
    or None; reads that one zip entry, loads no program, needs no torch. One line on a
    file that is not a zip archive."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.count("/") == 2
                     and n.endswith(f"/extra/{key}")]
            return archive.read(names[0]).decode("utf-8") if names else None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        raise EdgecnnError(f"{where}: not a torch.export archive ({exc})") from None


def load_pt2(path: Path | str, extra_keys: tuple[str, ...] = ()) -> tuple[Any, dict[str, str]]:
    """(ExportedProgram, {key: extra file text}) of a checked archive; one line on any failure.

    Raises `EdgecnnError` naming the file when the archive is not one edgecnn
    can load without running code from it (see the module docstring).
    """
    import torch

    path = require_file(path)
    check_archive(path)
    extra = {key: "" for key in extra_keys}
    try:
        with _torch_quiet_and_safe():
            program = torch.export.load(str(path), extra_files=extra)
    except RecursionError:
        raise EdgecnnError(f"{path}: the serialized program is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() \
            else type(exc).__name__
        raise EdgecnnError(f"{path}: not a loadable torch.export program ({first})") from None
    return program, {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for k, v in extra.items()}
