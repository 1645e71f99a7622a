"""Find an artifact's `ArtifactMetadata`: embedded first, then the sidecar JSON.

The record tells a torch-free runtime how to feed the model (input size,
mean/std, layout, class names, int8 input/output quantization). Where it
lives per format:

- ONNX: `metadata_props["edgecnn"]` (the session reads it from onnxruntime's
  `custom_metadata_map`, so no `onnx` package is needed);
- TFLite: a `Model.metadata` entry named "edgecnn" (read with `tflite_meta`);
- torch programs (.pt2): the `extra_files["edgecnn"]` of `torch.export.save`;
- any format: a sidecar `<artifact>.json` beside the file, when nothing is embedded.
"""

from __future__ import annotations

from pathlib import Path

from edgecnn.config import METADATA_KEY, ArtifactMetadata, sidecar_path
from edgecnn.errors import EdgecnnError
from edgecnn.util import require_file


def parse_metadata(text: str | bytes, source: str) -> ArtifactMetadata:
    """Parse the JSON record; `source` names where it came from in errors."""
    try:
        return ArtifactMetadata.from_json(text, "the record")
    except EdgecnnError as exc:
        raise EdgecnnError(f"{source}: invalid edgecnn metadata: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise EdgecnnError(f"{source}: invalid edgecnn metadata ({type(exc).__name__}: "
                           f"{exc})") from None


def resolve_metadata(path: Path, embedded: str | bytes | None) -> ArtifactMetadata | None:
    """The embedded record if present, else the sidecar's, else None."""
    if embedded:
        return parse_metadata(embedded, f"{path} (embedded '{METADATA_KEY}' entry)")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            raw = sidecar.read_bytes()
        except OSError as exc:
            raise EdgecnnError(f"{sidecar}: cannot read ({exc.strerror or exc})") from None
        return parse_metadata(raw, str(sidecar))
    return None


def read_metadata(path: Path | str) -> ArtifactMetadata | None:
    """An artifact's record, read cheaply: the ONNX metadata_props field, the TFLite
    Metadata entry, the .pt2's extra file, with no session, no graph and no torch or
    runtime imported (`onnx_meta`, `tflite_meta`, `safe_pt2.read_extra_file`)."""
    path = require_file(path)
    suffix = path.suffix.lower()
    embedded: str | bytes | None = None
    if suffix == ".tflite":
        from edgecnn.runtime.tflite_meta import read_tflite_metadata

        embedded = read_tflite_metadata(path.read_bytes(), path).get(METADATA_KEY)
    elif suffix == ".onnx":
        from edgecnn.runtime.onnx_meta import read_onnx_metadata

        embedded = read_onnx_metadata(path).get(METADATA_KEY)
    elif suffix == ".pt2":
        from edgecnn.safe_pt2 import read_extra_file

        embedded = read_extra_file(path, METADATA_KEY)
    return resolve_metadata(path, embedded)


def require_record(path: Path, metadata: ArtifactMetadata | None) -> ArtifactMetadata:
    """The metadata, or an error naming the file and why the record is needed."""
    if metadata is None:
        raise EdgecnnError(
            f"{path}: no edgecnn metadata (no embedded '{METADATA_KEY}' entry and no sidecar "
            f"{sidecar_path(path).name}); validate and predict need its preprocessing "
            "record (input size, mean/std, layout, classes)"
        )
    return metadata

