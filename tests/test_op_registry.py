"""The op records stay in step: every builtin the converter can write has a record, every
record has an op that writes it, every ONNX lowering has a parity case, and every aten op the
quantizer maps to a builtin names one with a record."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from edgecnn.export import tflite  # noqa: E402
from edgecnn.export.tflite.builtins import BUILTINS  # noqa: E402
from edgecnn.export.tflite.ops.base import LOWERINGS  # noqa: E402

CONVERTER = Path(tflite.__file__).parent
SCHEMA_BUILTINS = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}


def written_builtins() -> dict[str, set[str]]:
    """Builtin names that appear as string literals in the lowerings, the layout rules and
    the passes -> files."""
    found: dict[str, set[str]] = {}
    for path in [*CONVERTER.glob("ops/*.py"), *CONVERTER.glob("passes/*.py"),
                 CONVERTER / "layouts.py"]:
        for literal in re.findall(r'"([A-Z][A-Z0-9_]+)"', path.read_text()):
            if literal in SCHEMA_BUILTINS:
                found.setdefault(literal, set()).add(path.name)
    return found


def test_every_builtin_the_converter_writes_has_a_record() -> None:
    missing = {name: files for name, files in written_builtins().items() if name not in BUILTINS}
    assert not missing, f"builtins written without a record in builtins.py: {missing}"


def test_every_record_has_an_op_that_writes_it() -> None:
    orphans = set(BUILTINS) - set(written_builtins())
    assert not orphans, f"records no lowering or pass writes: {sorted(orphans)}"


def test_every_lowering_has_a_parity_case() -> None:
    from op_cases import CASES

    covered = {node.op_type for case in CASES for node in case.nodes()[0]}
    assert set(LOWERINGS) <= covered, f"lowerings without a parity row in op_cases.CASES: " \
                                      f"{sorted(set(LOWERINGS) - covered)}"


def test_every_layout_rule_and_propagation_belongs_to_a_lowering() -> None:
    """The records are the only place: no ONNX op has a layout rule but no lowering."""
    for name in LOWERINGS:
        record = LOWERINGS.get(name)
        assert record.name == name and callable(record.lower)
        assert record.propagates in (None, "forward", "both")


def test_quantizer_contracts_come_from_the_builtin_records() -> None:
    torch = pytest.importorskip("torch")  # noqa: F841
    from edgecnn.quant import annotators

    for target, name in annotators.LOWERS_TO.items():
        assert name is None or name in BUILTINS, f"{target} -> {name} has no record"
    for target in annotators.SHARED_OPS:
        assert annotators.LOWERS_TO[target] is None or \
            BUILTINS.get(annotators.LOWERS_TO[target]).int8 == "same"
    for target, name in annotators.FIXED_OUTPUT_OPS.items():
        assert BUILTINS.get(name).fixed_output is not None, target
