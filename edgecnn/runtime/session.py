"""One `Session` interface over onnxruntime, LiteRT, tflite-runtime and torch.

`predict(images)` is the same everywhere: uint8 or float NHWC images in,
float32 logits (N, classes) out. The session applies the artifact's own
preprocessing record (resize, mean/std, layout), quantizes int8 inputs and
dequantizes int8 outputs, and splits a batch into the chunks the artifact
accepts (a TFLite model often has a fixed batch of 1). Backends only
implement `_invoke` (one call of the model on a batch it accepts) and
`_chunk_size` (the batch it accepts).
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.config import ArtifactMetadata, Preprocessing, QuantParams
from edgecnn.errors import EdgecnnError
from edgecnn.preprocess import prepare
from edgecnn.qmath import affine_dequantize, affine_quantize
from edgecnn.runtime.metadata import require_record
from edgecnn.util import require_file


@dataclass(frozen=True)
class TensorInfo:
    """An input or output tensor as the runtime reports it (None = dynamic dimension)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    quant: QuantParams | None = None

    @property
    def is_integer(self) -> bool:
        return np.issubdtype(self.dtype, np.integer)

    def describe(self) -> str:
        dims = [("N" if i == 0 else "?") if d is None else str(d)
                for i, d in enumerate(self.shape)]
        return f"({', '.join(dims)}) {np.dtype(self.dtype).name}"


def pick_quant(runtime: QuantParams | None, fallback: QuantParams | None,
               dtype: np.dtype) -> QuantParams | None:
    """The tensor's own quantization when the runtime reports one, else the metadata's."""
    if not np.issubdtype(dtype, np.integer):
        return None
    return runtime if runtime is not None and runtime.scale > 0 else fallback


class Session(ABC):
    """A loaded artifact that turns images into logits; see the module docstring."""

    def __init__(self, path: Path, backend: str, threads: int | None,
                 metadata: ArtifactMetadata | None, input_info: TensorInfo,
                 output_info: TensorInfo) -> None:
        self.path, self.backend, self.threads = path, backend, threads
        self.metadata = metadata
        self.input, self.output = input_info, output_info

    # --- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _invoke(self, x: np.ndarray) -> np.ndarray:
        """Run the model once on raw input `x` (artifact dtype, a batch it accepts)."""

    def _chunk_size(self, n: int) -> int:
        """How many samples one `_invoke` takes when `n` remain (default: the fixed batch)."""
        batch = self.input.shape[0] if self.input.shape else None
        return n if batch is None else int(batch)

    def close(self) -> None:
        """Release the runtime's resources; backends holding native handles extend this."""
        self.closed = True

    # --- public interface ----------------------------------------------------------------
    @property
    def record(self) -> Preprocessing:
        """The preprocessing record; raises naming the file when the artifact has none."""
        return require_record(self.path, self.metadata).preprocessing

    @property
    def num_classes(self) -> int | None:
        """Logits per image from the output shape (None when the runtime cannot tell)."""
        dims = self.output.shape[1:]
        if any(d is None for d in dims):
            return None
        return int(np.prod(dims, dtype=np.int64)) if dims else 1

    def expected_shape(self) -> str:
        layout = f" {self.metadata.preprocessing.layout}" if self.metadata else ""
        return f"{self.input.describe()}{layout}"

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of `shape` matches the model's rank and non-batch dimensions."""
        expected = self.input.shape
        return len(shape) == len(expected) and all(
            e is None or e == d for e, d in zip(expected[1:], shape[1:], strict=True))

    def check_input(self, x: np.ndarray) -> None:
        """Raise naming the expected shape when `x` cannot feed the model."""
        if not self.fits(x.shape):
            raise EdgecnnError(f"{self.path}: input shape mismatch: the model expects "
                               f"{self.expected_shape()}, got {tuple(x.shape)}")

    def _split(self, x: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """(chunk, rows to keep) pairs of batches the model accepts; a short last chunk
        of a fixed batch is zero-padded and trimmed after the call."""
        parts, i, n = [], 0, len(x)
        while i < n:
            size = max(1, self._chunk_size(n - i))
            chunk, keep = x[i:i + size], min(size, n - i)
            if keep < size:
                pad = np.zeros((size - keep, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append((np.ascontiguousarray(chunk), keep))
            i += size
        return parts

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Raw input (artifact dtype) -> raw output, chunked and padded as the model needs."""
        self.check_input(x)
        outputs = [np.asarray(self._invoke(chunk))[:keep] for chunk, keep in self._split(x)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def invoker(self, x: np.ndarray) -> Callable[[], object]:
        """A no-argument call running the model on raw input `x`, split up front: what
        `bench` times, so that only the runtime's work is inside the timing."""
        self.check_input(x)
        chunks = [chunk for chunk, _ in self._split(x)]
        invoke = self._invoke
        if len(chunks) == 1:
            only = chunks[0]
            return lambda: invoke(only)
        return lambda: [invoke(chunk) for chunk in chunks]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float model input (artifact layout) -> float32 logits (N, classes)."""
        x = np.asarray(x)
        self.check_input(x)
        if self.input.is_integer and not np.issubdtype(x.dtype, np.integer):
            if self.input.quant is None:
                raise EdgecnnError(f"{self.path}: the input is {self.input.dtype.name} but no "
                                   "quantization parameters were found (model or metadata)")
            x = affine_quantize(x, self.input.quant.scale, self.input.quant.zero_point,
                             self.input.dtype)
        elif not self.input.is_integer:
            x = x.astype(self.input.dtype, copy=False)
        y = self.run_raw(x)
        if self.output.is_integer:
            if self.output.quant is None:
                raise EdgecnnError(f"{self.path}: the output is {self.output.dtype.name} but "
                                   "no quantization parameters were found (model or metadata)")
            y = affine_dequantize(y, self.output.quant.scale, self.output.quant.zero_point)
        return y.reshape(len(x), -1).astype(np.float32, copy=False)

    def predict(self, images, batch_size: int = 64) -> np.ndarray:
        """uint8 (0..255) or float (0..1) NHWC images of any size, or a sequence of HWC
        images of different sizes (e.g. `ImageFiles`) -> float32 logits (N, classes)."""
        if isinstance(images, np.ndarray) or not hasattr(images, "__getitem__"):
            images = np.asarray(images)
        if len(images) == 0:
            return np.zeros((0, self.num_classes or 0), np.float32)
        return np.concatenate(list(self.predict_batches(images, batch_size)))

    def predict_batches(self, images, batch_size: int = 64):
        """`predict`, one (batch, classes) float32 array at a time: each batch is
        preprocessed when needed, the next ones decoded and cropped ahead in a thread
        (`data.files.batches`), so memory does not grow with the number of images."""
        from edgecnn.data.files import batches

        record = self.record
        if isinstance(images, np.ndarray) or not hasattr(images, "__getitem__"):
            images = np.asarray(images)
        for x in batches(images, batch_size, lambda batch: prepare(batch, record)):
            if not self.fits(x.shape):
                raise EdgecnnError(
                    f"{self.path}: input shape mismatch: the model expects "
                    f"{self.expected_shape()}, but its preprocessing record gives "
                    f"{tuple(x.shape)} (input_size {record.input_size[0]}x"
                    f"{record.input_size[1]}, {record.channels} channel(s), {record.layout})")
            yield self.run(x)

    def random_input(self, batch: int, seed: int = 0) -> np.ndarray:
        """A raw input of the artifact's shape and dtype (bench needs no metadata)."""
        rng = np.random.default_rng(seed)
        shape = (batch, *[1 if d is None else d for d in self.input.shape[1:]])
        if self.input.is_integer:
            info = np.iinfo(self.input.dtype)
            return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(
                self.input.dtype)
        return rng.standard_normal(shape).astype(self.input.dtype)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- backends ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Backend:
    """A runtime that opens some artifact formats; `opener` is "module:function"."""

    name: str
    module: str
    suffixes: tuple[str, ...]
    opener: str
    install: str

    @property
    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False


#: In order of preference for `backend="auto"`.
BACKENDS: tuple[Backend, ...] = (
    Backend("onnxruntime", "onnxruntime", (".onnx",),
            "edgecnn.runtime.backends.onnx:open_onnx", "pip install onnxruntime"),
    Backend("ai_edge_litert", "ai_edge_litert", (".tflite",),
            "edgecnn.runtime.backends.tflite:open_tflite", "pip install ai-edge-litert"),
    Backend("tflite_runtime", "tflite_runtime", (".tflite",),
            "edgecnn.runtime.backends.tflite:open_tflite", "pip install tflite-runtime"),
    Backend("torch", "torch", (".pt2",),
            "edgecnn.runtime.backends.torch:open_torch", "pip install 'edgecnn[train]'"),
)


def installed_backends() -> list[str]:
    """Names of the backends importable here."""
    return [b.name for b in BACKENDS if b.installed]


def choose_backend(path: Path, backend: str = "auto") -> Backend:
    """The backend to open `path` with; errors list what is installed or supported."""
    suffix = path.suffix.lower()
    suffixes = sorted({s for b in BACKENDS for s in b.suffixes})
    installed = ", ".join(installed_backends()) or "none"
    if backend == "auto":
        fitting = [b for b in BACKENDS if suffix in b.suffixes]
        if not fitting:
            raise EdgecnnError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; "
                               f"supported: {', '.join(suffixes)}")
        for candidate in fitting:
            if candidate.installed:
                return candidate
        hints = " or ".join(b.install for b in fitting)
        raise EdgecnnError(f"{path}: no runtime for {suffix} is installed ({hints}); "
                           f"installed backends: {installed}")
    chosen = next((b for b in BACKENDS if b.name == backend), None)
    if chosen is None:
        raise EdgecnnError(f"unknown backend {backend!r}; installed: {installed} "
                           f"(known: auto, {', '.join(b.name for b in BACKENDS)})")
    if not chosen.installed:
        raise EdgecnnError(f"backend {backend!r} is not installed ({chosen.install}); "
                           f"installed: {installed}")
    if suffix not in chosen.suffixes:
        raise EdgecnnError(f"{path}: backend {backend!r} opens {', '.join(chosen.suffixes)} "
                           f"files, not {suffix or '(no suffix)'}")
    return chosen


def open_session(path: Path | str, backend: str = "auto", threads: int | None = None) -> Session:
    """Open an artifact (.onnx, .tflite, .pt2) with the chosen or best installed runtime.

    .tflite and .onnx files pass `edgecnn.runtime.check.check_file` first.
    """
    path = Path(path)
    if threads is not None and threads < 1:
        raise EdgecnnError(f"threads must be at least 1, got {threads}")
    chosen = choose_backend(path, backend)
    require_file(path)
    from edgecnn.runtime.check import check_file

    check_file(path)  # refuse what would crash or mislead the runtime, before it sees the file
    module, _, function = chosen.opener.partition(":")
    opener = getattr(importlib.import_module(module), function)
    return opener(path, backend=chosen.name, threads=threads)
