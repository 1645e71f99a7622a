"""onnxruntime backend: `.onnx` files, metadata from `metadata_props["edgecnn"]`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.config import METADATA_KEY
from edgecnn.errors import EdgecnnError
from edgecnn.runtime.metadata import resolve_metadata
from edgecnn.runtime.session import Session, TensorInfo, pick_quant

#: onnxruntime's type strings -> numpy dtypes.
_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


def open_onnx_session(path: Path, threads: int | None):
    """An `onnxruntime.InferenceSession` on CPU; a bad file becomes one line naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions: one line, no native echo
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = threads
    # Idle worker threads sleep instead of spinning: bench interleaves artifacts in separate
    # processes, and a spinning pool would steal the cores from the next artifact's run.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgecnnError(f"{path}: not a loadable ONNX model ({first})") from None


def _tensor_info(arg, quant_fallback) -> TensorInfo:
    dtype = np.dtype(_DTYPES.get(arg.type, np.float32))
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorInfo(arg.name, shape, dtype, pick_quant(None, quant_fallback, dtype))


class OnnxSession(Session):
    """A classifier ONNX model with one input and (at least) one output: the logits."""

    def __init__(self, path: Path, backend: str, threads: int | None) -> None:
        self._session = open_onnx_session(path, threads)
        embedded = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        metadata = resolve_metadata(path, embedded)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise EdgecnnError(f"{path}: expected one image input, the model has "
                               f"{len(inputs)}: {[i.name for i in inputs]}")
        super().__init__(
            path, backend, threads, metadata,
            _tensor_info(inputs[0], metadata.input_quant if metadata else None),
            _tensor_info(outputs[0], metadata.output_quant if metadata else None),
        )

    def _invoke(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self.output.name], {self.input.name: x})[0]
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0]
            raise EdgecnnError(f"{self.path}: onnxruntime failed on input "
                               f"{tuple(x.shape)} {x.dtype} ({first}); the model expects "
                               f"{self.expected_shape()}") from None


def open_onnx(path: Path, *, backend: str, threads: int | None) -> OnnxSession:
    """Opener registered in `session.BACKENDS`."""
    return OnnxSession(path, backend, threads)
