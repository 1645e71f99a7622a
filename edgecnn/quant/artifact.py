"""The quantized program on disk: model_int8.pt2 (+ metadata), metrics.json, config.json.

`model_int8.pt2` is `torch.export.save` of the converted Q/DQ program, with the
`ArtifactMetadata` JSON (precision "int8") stored under the extra file
"edgecnn". `config.json` is the fp32 checkpoint's, so the float model can be
rebuilt next to it. Accuracies in metrics.json are fractions in [0, 1];
`accuracy_drop` is fp32 minus int8 in percentage points.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule

from edgecnn.config import METADATA_KEY, ArtifactMetadata
from edgecnn.errors import EdgecnnError
from edgecnn.quant.calibrate import batch_dim
from edgecnn.safe_pt2 import load_pt2
from edgecnn.util import atomic_write

PROGRAM = "model_int8.pt2"
METRICS = "metrics.json"
CONFIG = "config.json"


def to_program(converted: GraphModule, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """Re-capture a converted graph as an ExportedProgram (batch dimension dynamic).

    The program keeps its example input, and `torch.export.save` writes a tensor's
    whole storage: a copy is captured, never a view into the caller's data (a slice
    `x[:2]` of the training set would carry every training image into the file).
    """
    sample = example_input.detach().clone(memory_format=torch.contiguous_format)
    return torch.export.export(converted, (sample,),
                               dynamic_shapes=(batch_dim(),))


def save_program(directory: Path, converted: GraphModule | torch.export.ExportedProgram,
         metadata: ArtifactMetadata, *, example_input: torch.Tensor | None = None,
         metrics: dict[str, Any] | None = None, checkpoint: Path | None = None) -> Path:
    """Write model_int8.pt2 (and metrics.json, config.json when given); return its path."""
    if metadata.precision != "int8":
        raise EdgecnnError(f"a quantized program's metadata must say precision 'int8', "
                           f"got {metadata.precision!r}")
    directory = Path(directory)
    if isinstance(converted, torch.export.ExportedProgram):
        program = converted
    elif example_input is None:
        raise EdgecnnError("saving a converted GraphModule needs an example input")
    else:
        program = to_program(converted, example_input)
    buffer = io.BytesIO()  # torch.export.save insists on a .pt2 name; atomic_write's is .tmp
    torch.export.save(program, buffer, extra_files={METADATA_KEY: metadata.to_json()})
    with atomic_write(directory / PROGRAM) as tmp:
        tmp.write_bytes(buffer.getvalue())
    if metrics is not None:
        with atomic_write(directory / METRICS) as tmp:
            tmp.write_text(json.dumps(metrics, indent=2))
    if checkpoint is not None:
        source = Path(checkpoint) / CONFIG
        if not source.is_file():
            raise EdgecnnError(f"checkpoint directory {checkpoint} has no {CONFIG}")
        with atomic_write(directory / CONFIG) as tmp:
            shutil.copyfile(source, tmp)
    return directory / PROGRAM


def load_program(directory: Path) -> tuple[torch.export.ExportedProgram, ArtifactMetadata]:
    """Read model_int8.pt2 and its metadata. `.module()` of the program runs it.

    The archive is checked first (`edgecnn.safe_pt2`): nothing in it is unpickled or
    evaluated as code; a file that would need that is refused with one line.
    """
    import torchao.quantization.pt2e  # noqa: F401 - registers the quantized_decomposed ops

    path = Path(directory) / PROGRAM
    if not path.is_file():
        raise EdgecnnError(f"quantized program not found: {path}")
    program, extra = load_pt2(path, (METADATA_KEY,))  # never runs code from the file
    if not extra[METADATA_KEY]:
        raise EdgecnnError(f"{path}: no edgecnn metadata (extra file {METADATA_KEY!r})")
    try:
        return program, ArtifactMetadata.from_json(extra[METADATA_KEY], "the record")
    except EdgecnnError as exc:
        raise EdgecnnError(f"{path}: invalid edgecnn metadata: {exc}") from None
