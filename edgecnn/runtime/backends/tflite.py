"""TFLite backend over ai_edge_litert (LiteRT) or tflite_runtime: the same Interpreter API.

Metadata comes from the flatbuffer's "edgecnn" entry, read by `tflite_meta`
(no schema package needed). Many TFLite models have a fixed batch of 1: the
session resizes the input (`resize_tensor_input`) only when the model declares
a dynamic batch (shape_signature -1), and otherwise invokes once per image.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgecnn.config import METADATA_KEY, QuantParams
from edgecnn.errors import EdgecnnError, first_line
from edgecnn.runtime.check import check_tflite
from edgecnn.runtime.metadata import resolve_metadata
from edgecnn.runtime.session import Session, TensorInfo, pick_quant
from edgecnn.runtime.tflite_meta import read_tflite_metadata

#: backend name -> the module that holds `Interpreter`.
_INTERPRETER_MODULES = {"ai_edge_litert": "ai_edge_litert.interpreter",
                        "tflite_runtime": "tflite_runtime.interpreter"}


@contextlib.contextmanager
def _native_stderr(captured: list[str]) -> Iterator[None]:
    """Collect what the C++ runtime prints on fd 2 (e.g. "INFO: Created TensorFlow Lite
    XNNPACK delegate") into `captured`; on success, pass on all but the INFO lines."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    failed = False
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.extend(line for line in tmp.read().decode("utf-8", "replace").splitlines()
                            if line.strip() and not line.startswith("INFO:"))
            if captured and not failed:
                sys.stderr.write("\n".join(captured) + "\n")


def interpreter(model: bytes | str | Path, *, backend: str = "ai_edge_litert",
                threads: int | None = 1, delegate: bool = True,
                preserve_all_tensors: bool = False, name: str | Path | None = None):
    """An `Interpreter` of `backend` (ai_edge_litert or tflite_runtime) with its tensors
    allocated: the one place a .tflite is opened (sessions, inspect, the converter's
    checks, tests and benchmarks).

    model: the file's path or bytes. delegate=False runs the builtin kernels only
    (`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`: no default XNNPACK delegate);
    preserve_all_tensors keeps every intermediate tensor readable after `invoke`
    (LiteRT's debugging option). What the C++ runtime prints is kept out of the output
    unless it is more than an INFO banner.

    Raises EdgecnnError naming the file (or `name`, for bytes) when the runtime refuses it.
    """
    module = importlib.import_module(_INTERPRETER_MODULES[backend])
    resolver = module.OpResolverType.AUTO if delegate else \
        module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_content": model} if isinstance(model, bytes) else \
        {"model_path": str(model)}
    captured: list[str] = []
    try:
        with _native_stderr(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
            it = module.Interpreter(**source, num_threads=threads,
                                    experimental_op_resolver_type=resolver,
                                    experimental_preserve_all_tensors=preserve_all_tensors)
            it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        name = name or ("<bytes>" if isinstance(model, bytes) else model)
        detail = "; ".join([first_line(exc), *captured[-1:]])
        raise EdgecnnError(f"{name}: {backend} cannot load this TFLite model ({detail})") \
            from None
    return it


def _runtime_quant(detail: dict) -> QuantParams | None:
    params = detail.get("quantization_parameters") or {}
    scales = params.get("scales")
    if scales is not None and len(scales) > 1:
        return None  # per-channel I/O is not a plain affine tensor; use the metadata
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return QuantParams(float(scale), int(zero_point)) if scale else None


def _tensor_info(detail: dict, fallback: QuantParams | None) -> TensorInfo:
    dtype = np.dtype(detail["dtype"])
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorInfo(detail["name"], shape, dtype,
                      pick_quant(_runtime_quant(detail), fallback, dtype))


class TfliteSession(Session):
    """A single-input classifier .tflite model."""

    def __init__(self, path: Path, backend: str, threads: int | None) -> None:
        data = path.read_bytes()
        check_tflite(data, path)
        metadata = resolve_metadata(path, read_tflite_metadata(data, path).get(METADATA_KEY))
        del data
        self._interpreter = interpreter(path, backend=backend, threads=threads)
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1:
            raise EdgecnnError(f"{path}: expected one image input, the model has {len(inputs)}")
        self._in_index, self._out_index = inputs[0]["index"], outputs[0]["index"]
        self._base_batch = int(inputs[0]["shape"][0]) if len(inputs[0]["shape"]) else 1
        self._batch = self._base_batch
        input_info = _tensor_info(inputs[0], metadata.input_quant if metadata else None)
        # Resize only a batch the model declares dynamic (shape_signature -1): after a
        # failed resize, tflite_runtime 2.14 can crash in allocate_tensors.
        self._resizable = bool(input_info.shape) and input_info.shape[0] is None
        super().__init__(path, backend, threads, metadata, input_info,
                         _tensor_info(outputs[0], metadata.output_quant if metadata else None))

    def _resize(self, batch: int) -> None:
        shape = [batch, *self._interpreter.get_input_details()[0]["shape"][1:]]
        try:
            self._interpreter.resize_tensor_input(self._in_index, shape, strict=False)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise EdgecnnError(f"{self.path}: cannot resize the input to a batch of {batch} "
                               f"({first_line(exc)})") from None
        self._batch = batch

    def _chunk_size(self, n: int) -> int:
        return n if self._resizable else self._base_batch

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] != self._batch:
            self._resize(x.shape[0])
        try:
            self._interpreter.set_tensor(self._in_index, x)
            self._interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise EdgecnnError(f"{self.path}: {self.backend} failed on input "
                               f"{tuple(x.shape)} {x.dtype} ({first_line(exc)}); "
                               f"the model expects {self.expected_shape()}") from None
        return self._interpreter.get_tensor(self._out_index).copy()

    def close(self) -> None:
        self._interpreter = None
        super().close()


def open_tflite(path: Path, *, backend: str, threads: int | None) -> TfliteSession:
    """Opener registered in `session.BACKENDS` for both TFLite runtimes."""
    return TfliteSession(path, backend, threads)
