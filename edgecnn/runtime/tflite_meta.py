"""Read a .tflite file's metadata, and check its structure, with nothing but `struct`.

A Raspberry Pi has tflite_runtime and numpy, but neither the `flatbuffers`
package nor a generated TFLite schema, so this module walks just enough of
the flatbuffer format to reach `Model.metadata` (name -> buffer index) and
`Model.buffers` (the bytes). Every read is bounds-checked: a truncated or
corrupt file raises `EdgecnnError` naming the file instead of crashing.

`verify_tflite` walks the rest of the model's structure (operator codes,
subgraphs, tensors, operators, buffers) the same way, because tflite_runtime
2.14 does not verify a file before using it: a truncated model would reach
the interpreter as garbage ("Missing registration for opcode ...") or crash it.

Flatbuffer layout used here: the file starts with a uint32 offset to the root
table and the 4-byte identifier "TFL3". A table starts with an int32 offset
back to its vtable; the vtable lists uint16 field offsets (0 = absent).
Reference fields hold a uint32 offset relative to their own position; a
vector is a uint32 length followed by its elements.
"""

from __future__ import annotations

import struct
from pathlib import Path

from edgecnn.errors import EdgecnnError

FILE_IDENTIFIER = b"TFL3"

# Field indices in the TFLite schema (schema.fbs: tables Model, SubGraph, Tensor,
# QuantizationParameters, Operator, Metadata, Buffer).
_MODEL_OPCODES = 1
_MODEL_SUBGRAPHS = 2
_MODEL_DESCRIPTION = 3
_MODEL_BUFFERS = 4
_MODEL_METADATA_BUFFER = 5
_MODEL_METADATA = 6
_METADATA_NAME = 0
_METADATA_BUFFER = 1
_BUFFER_DATA = 0
_BUFFER_OFFSET = 1
_BUFFER_SIZE = 2


class _Corrupt(Exception):
    """Internal: an out-of-bounds or inconsistent read; becomes an EdgecnnError."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise _Corrupt(f"read of {size} bytes at offset {pos} is past the end "
                           f"({len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def deref(self, pos: int) -> int:
        """Follow the uoffset stored at `pos`."""
        return pos + self.u32(pos)

    def field(self, table: int, index: int) -> int | None:
        """Absolute position of a table's field, or None when the field is absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def vector(self, pos: int, elem_size: int) -> tuple[int, int]:
        """(start, length) of the vector referenced at `pos`."""
        start = self.deref(pos)
        length = self.u32(start)
        if start + 4 + length * elem_size > len(self.data):
            raise _Corrupt(f"vector of {length} elements at offset {start} is past the end")
        return start + 4, length

    def table(self, pos: int) -> int:
        """Check that the table at `pos` (vtable and inline fields) lies inside the data."""
        vtable = pos - self._unpack("<i", pos)
        vtable_size, inline_size = self._unpack("<H", vtable), self._unpack("<H", vtable + 2)
        if vtable_size < 4 or vtable + vtable_size > len(self.data) or inline_size < 4 \
                or pos + inline_size > len(self.data):
            raise _Corrupt(f"table at offset {pos} is past the end or malformed")
        return pos

    def tables(self, table: int, index: int) -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        start, length = self.vector(pos, 4)
        return [self.table(self.deref(start + 4 * i)) for i in range(length)]

    def int_vector(self, table: int, index: int, fmt: str = "<i") -> list[int]:
        pos = self.field(table, index)
        if pos is None:
            return []
        size = struct.calcsize(fmt)
        start, length = self.vector(pos, size)
        return [self._unpack(fmt, start + size * i) for i in range(length)]

    def string(self, table: int, index: int) -> str:
        pos = self.field(table, index)
        if pos is None:
            return ""
        start, length = self.vector(pos, 1)
        return self.data[start:start + length].decode("utf-8", errors="replace")

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._unpack(fmt, pos)

    def buffer_bytes(self, buffer_table: int) -> bytes:
        pos = self.field(buffer_table, _BUFFER_DATA)
        if pos is not None:
            start, length = self.vector(pos, 1)
            return self.data[start:start + length]
        # Models over 2 GB keep buffers after the flatbuffer: offset from the file start.
        offset = self.scalar(buffer_table, _BUFFER_OFFSET, "<Q")
        size = self.scalar(buffer_table, _BUFFER_SIZE, "<Q")
        if offset > 1 and offset + size <= len(self.data):
            return self.data[offset:offset + size]
        if size:
            raise _Corrupt(f"external buffer at {offset} (+{size}) is past the end")
        return b""


def _verify_subgraph(reader: _Reader, subgraph: int, num_opcodes: int,
                     num_buffers: int) -> None:
    tensors = reader.tables(subgraph, 0)
    for i, tensor in enumerate(tensors):
        reader.int_vector(tensor, 0)  # shape
        reader.string(tensor, 3)  # name
        if reader.scalar(tensor, 2, "<I") >= max(num_buffers, 1):
            raise _Corrupt(f"tensor {i} points at buffer {reader.scalar(tensor, 2, '<I')} "
                           f"of {num_buffers}")
        quant = reader.field(tensor, 4)
        if quant is not None:
            q = reader.table(reader.deref(quant))
            for field_index, fmt in ((0, "<f"), (1, "<f"), (2, "<f"), (3, "<q")):
                reader.int_vector(q, field_index, fmt)
        reader.int_vector(tensor, 7)  # shape_signature
    for i in (*reader.int_vector(subgraph, 1), *reader.int_vector(subgraph, 2)):
        if not 0 <= i < len(tensors):
            raise _Corrupt(f"subgraph input/output {i} is not one of {len(tensors)} tensors")
    for n, op in enumerate(reader.tables(subgraph, 3)):
        if reader.scalar(op, 0, "<I") >= num_opcodes:
            raise _Corrupt(f"operator {n} uses opcode {reader.scalar(op, 0, '<I')} "
                           f"of {num_opcodes}")
        for i in (*reader.int_vector(op, 1), *reader.int_vector(op, 2)):
            if not -1 <= i < len(tensors):
                raise _Corrupt(f"operator {n} refers to tensor {i} of {len(tensors)}")
        options = reader.field(op, 4)
        if options is not None:
            reader.table(reader.deref(options))
        reader.int_vector(op, 5, "<B")  # custom_options
    reader.string(subgraph, 4)


def verify_tflite(data: bytes, path: Path | str = "<bytes>") -> None:
    """Raise `EdgecnnError` naming `path` unless the model's structure lies inside the data."""
    check_identifier(data, path)
    reader = _Reader(data)
    try:
        root = reader.table(reader.deref(0))
        opcodes = reader.tables(root, _MODEL_OPCODES)
        buffers = reader.tables(root, _MODEL_BUFFERS)
        for buffer in buffers:
            reader.buffer_bytes(buffer)
        subgraphs = reader.tables(root, _MODEL_SUBGRAPHS)
        if not subgraphs:
            raise _Corrupt("the model has no subgraph")
        for subgraph in subgraphs:
            _verify_subgraph(reader, subgraph, len(opcodes), len(buffers))
        reader.string(root, _MODEL_DESCRIPTION)
        reader.int_vector(root, _MODEL_METADATA_BUFFER)
        for meta in reader.tables(root, _MODEL_METADATA):
            reader.string(meta, _METADATA_NAME)
    except _Corrupt as exc:
        raise EdgecnnError(f"{path}: corrupt or truncated TFLite model ({exc})") from None


def check_identifier(data: bytes, path: Path | str) -> None:
    """Raise unless `data` looks like a TFLite flatbuffer (identifier "TFL3")."""
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise EdgecnnError(f"{path}: not a TFLite model (no 'TFL3' identifier; "
                           f"{len(data)} bytes); is the file truncated or of another format?")


def read_tflite_metadata(data: bytes, path: Path | str = "<bytes>") -> dict[str, bytes]:
    """All `Model.metadata` entries of a .tflite flatbuffer, name -> buffer bytes."""
    check_identifier(data, path)
    reader = _Reader(data)
    try:
        root = reader.deref(0)
        buffers = reader.tables(root, _MODEL_BUFFERS)
        entries: dict[str, bytes] = {}
        for meta in reader.tables(root, _MODEL_METADATA):
            name = reader.string(meta, _METADATA_NAME)
            index = reader.scalar(meta, _METADATA_BUFFER, "<I")
            if index >= len(buffers):
                raise _Corrupt(f"metadata {name!r} points at buffer {index} "
                               f"of {len(buffers)}")
            entries[name] = reader.buffer_bytes(buffers[index])
        return entries
    except _Corrupt as exc:
        raise EdgecnnError(f"{path}: corrupt or truncated TFLite model ({exc})") from None
