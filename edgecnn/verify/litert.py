"""What the exporter wrote, checked on LiteRT: op counts, XNNPACK coverage, raw outputs.

Used by tests, benchmarks and `edgecnn convert`. The interpreter is the runtime
backend's (`runtime.backends.tflite.interpreter`), inputs are quantized by
`qmath.affine_quantize`: the parity checks open and feed a file as a device does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from edgecnn.qmath import affine_quantize
from edgecnn.runtime.backends.tflite import interpreter

BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _bytes(model: bytes | str | Path) -> bytes:
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def op_counts(model: bytes | str | Path) -> Counter[str]:
    """How many operators of each builtin type the file holds."""
    root = schema.Model.GetRootAs(_bytes(model), 0)
    codes = [max(root.OperatorCodes(i).BuiltinCode(), root.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(root.OperatorCodesLength())]
    counts: Counter[str] = Counter()
    for s in range(root.SubgraphsLength()):
        subgraph = root.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            counts[BUILTIN_NAMES[codes[subgraph.Operators(i).OpcodeIndex()]]] += 1
    return counts


def quantize_input(detail: dict, x: np.ndarray) -> np.ndarray:
    """A float input as the interpreter input `detail` takes it: an integer input is
    quantized with its (scale, zero point) by `qmath.affine_quantize`, as a session does."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return np.ascontiguousarray(affine_quantize(x, scale, zero, detail["dtype"]))
    return np.ascontiguousarray(x, dtype=detail["dtype"])


def run_images(model: bytes | str | Path, images: np.ndarray, *, delegate: bool = True,
               ) -> tuple[np.ndarray, tuple[float, int]]:
    """Raw outputs for float NCHW model inputs, one image per call, and the output's
    (scale, zero point); outputs stay raw (int8 for full-int8 files). Images go in
    NHWC, or NCHW when that is the file's input shape (other converters' files)."""
    it = interpreter(model, delegate=delegate)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    images = np.asarray(images, np.float32)
    if list(inp["shape"][1:]) != list(images.shape[1:]):
        images = images.transpose(0, 2, 3, 1)
    outputs = []
    for x in images:
        it.set_tensor(inp["index"], quantize_input(inp, x[None]))
        it.invoke()
        outputs.append(it.get_tensor(out["index"]))
    return np.concatenate(outputs), out["quantization"]


@dataclass(frozen=True)
class DelegateCoverage:
    """How the default delegate (XNNPACK) partitioned the graph."""

    total: int        # operators in the model
    delegated: int    # operators inside a delegate partition
    partitions: int   # delegate nodes

    @property
    def outside(self) -> int:
        return self.total - self.delegated


def delegate_coverage(model: bytes | str | Path, *, threads: int = 1) -> DelegateCoverage:
    """Count the operators the default delegate took.

    After `allocate_tensors` the interpreter lists the model's operators and
    then one DELEGATE node per partition, whose inputs are the tensors the
    partition reads from outside. Walking back from each DELEGATE node's
    outputs through producers, stopping at its inputs, visits exactly the
    operators of that partition; everything else runs outside the delegate.
    """
    it = interpreter(model, threads=threads)
    details = it._get_ops_details()  # the one Python view of nodes after delegation
    originals = [d for d in details if d["op_name"] != "DELEGATE"]
    producer = {int(t): d["index"] for d in originals for t in d["outputs"]}
    by_index = {d["index"]: d for d in originals}
    inside: set[int] = set()
    partitions = [d for d in details if d["op_name"] == "DELEGATE"]
    for partition in partitions:
        boundary = {int(t) for t in partition["inputs"]}
        stack = [int(t) for t in partition["outputs"]]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node in inside:
                continue
            inside.add(node)
            stack.extend(int(t) for t in by_index[node]["inputs"]
                         if int(t) >= 0 and int(t) not in boundary)
    return DelegateCoverage(len(originals), len(inside), len(partitions))
