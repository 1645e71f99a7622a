"""torch backend: `.pt2` programs from `torch.export.save(..., extra_files={"edgecnn": json})`.

Opened only when torch is installed; the rest of `edgecnn.runtime` never
imports torch, so devices without it run ONNX and TFLite artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.config import METADATA_KEY
from edgecnn.errors import EdgecnnError
from edgecnn.runtime.metadata import resolve_metadata
from edgecnn.runtime.session import Session, TensorInfo


def load_program(path: Path) -> tuple[Any, str | None]:
    """(ExportedProgram, embedded metadata JSON or None); a bad file becomes one line."""
    from edgecnn.safe_pt2 import load_pt2

    program, extra = load_pt2(path, (METADATA_KEY,))  # never runs code from the file
    return program, extra[METADATA_KEY] or None


def _info(name: str, value: Any) -> TensorInfo:
    import torch

    shape = tuple(d if isinstance(d, int) else None for d in value.shape)
    dtype = torch.empty(0, dtype=value.dtype).numpy().dtype
    return TensorInfo(name, shape, np.dtype(dtype))


class TorchSession(Session):
    """An exported program run eagerly through `ExportedProgram.module()`."""

    def __init__(self, path: Path, backend: str, threads: int | None) -> None:
        import torch

        program, embedded = load_program(path)
        metadata = resolve_metadata(path, embedded)
        if threads:
            torch.set_num_threads(threads)
        nodes = {n.name: n for n in program.graph.nodes}
        user_inputs = list(program.graph_signature.user_inputs)
        if len(user_inputs) != 1:
            raise EdgecnnError(f"{path}: expected one image input, the program has "
                               f"{len(user_inputs)}: {user_inputs}")
        output_node = next(n for n in program.graph.nodes if n.op == "output")
        first_output = output_node.args[0][0]
        self._module = program.module()
        super().__init__(path, backend, threads, metadata,
                         _info(user_inputs[0], nodes[user_inputs[0]].meta["val"]),
                         _info(first_output.name, first_output.meta["val"]))

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self._module(torch.from_numpy(x))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().cpu().numpy()


def open_torch(path: Path, *, backend: str, threads: int | None) -> TorchSession:
    """Opener registered in `session.BACKENDS`."""
    return TorchSession(path, backend, threads)
