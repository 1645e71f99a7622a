"""Read an ONNX file's `metadata_props` without onnx, onnxruntime or loading the graph.

`ModelProto.metadata_props` is field 14, a repeated `StringStringEntryProto`
(key = field 1, value = field 2) (onnx/onnx.proto). The reader walks the
top-level fields of the protobuf wire format (varint tags; wire types 0
varint, 1 fixed64, 2 length-delimited, 5 fixed32: protobuf's encoding guide)
and skips every other field by its length, so the graph and its weights are
never parsed: reading the record of a 100 MB model touches a few bytes of it.
Torch-free and dependency-free, as `tflite_meta` is for .tflite.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from edgecnn.errors import EdgecnnError

METADATA_PROPS = 14  # ModelProto field number


def _varint(data: memoryview | bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise EdgecnnError(f"{where}: corrupt or truncated ONNX model (bad varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview | bytes, where: str):
    """(field number, wire type, value) of each top-level field; length-delimited values
    are (start, end) offsets into `data`, never copied."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos, where)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos, where)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            size, pos = _varint(data, pos, where)
            value, pos = (pos, pos + size), pos + size
        else:
            raise EdgecnnError(f"{where}: corrupt or truncated ONNX model (wire type {wire})")
        if pos > len(data) or number == 0:
            raise EdgecnnError(f"{where}: corrupt or truncated ONNX model")
        yield number, wire, value


def parse_onnx_metadata(data: bytes | memoryview, where: str) -> dict[str, str]:
    """{key: value} of a serialized ModelProto's metadata_props; EdgecnnError naming
    `where` when the bytes are not a well-formed protobuf message."""
    props: dict[str, str] = {}
    for number, wire, span in _fields(data, where):
        if number != METADATA_PROPS or wire != 2:
            continue
        entry = bytes(data[span[0]:span[1]])  # small: a key and a JSON record
        key = value = ""
        for field, kind, inner in _fields(entry, where):
            if kind == 2 and field in (1, 2):
                text = bytes(entry[inner[0]:inner[1]]).decode("utf-8", errors="replace")
                key, value = (text, value) if field == 1 else (key, text)
        props[key] = value
    return props


def read_onnx_metadata(path: Path | str) -> dict[str, str]:
    """The metadata_props of the .onnx file at `path` (memory-mapped, nothing else read)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if path.stat().st_size == 0:
                raise EdgecnnError(f"{path}: empty file, not an ONNX model")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    return parse_onnx_metadata(view, str(path))
                finally:
                    view.release()
    except OSError as exc:
        raise EdgecnnError(f"{path}: cannot read ({exc.strerror or exc})") from None
