"""Inference in a worker process: a runtime that crashes takes only the worker down.

onnxruntime, LiteRT and tflite-runtime run native code on the artifact's own
numbers; a damaged file can make them die of a signal (SIGSEGV, SIGFPE)
instead of raising. `validate` therefore opens and runs every artifact here,
one process per artifact, and a crash becomes one line naming the file and
the signal.

Protocol (JSON lines, like `bench_worker`): the worker is started with
{"path", "backend", "threads"} as one argument, opens the artifact and
answers {"ok": true, "backend", "metadata" (JSON text or null),
"num_classes"}; then answers {"cmd": "predict", "images": NPY or JSON, "out": NPY,
"batch_size": n[, "top": k]} with {"ok": true, "outputs": K, "finite": bool} after
writing to `out` the float32 logits (N, K), or with "top" the int32 (N, min(k, K))
classes of the k highest logits, best first (ties: lower class first, as argmax).
`images` is an .npy of uint8 NHWC images (memory-mapped) or a .json
{"paths": [...], "mode": "L" | "RGB"} of image files, decoded a batch at a time
(`data.files`): with "top", memory does not grow with the number of images. It
stops at {"cmd": "quit"} or end of input. Errors: {"ok": false, "error": "one line"}.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO

import numpy as np

from edgecnn.errors import EdgecnnError


def _answer(channel: IO[str], message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def serve(settings: dict, requests: IO[str], channel: IO[str]) -> None:
    """Open the artifact, then answer predict requests until "quit" or end of input."""
    from edgecnn.runtime.session import open_session

    try:
        session = open_session(Path(settings["path"]), settings.get("backend", "auto"),
                               threads=settings.get("threads"))
        metadata = session.metadata
        _answer(channel, {"ok": True, "backend": session.backend,
                          "metadata": metadata.to_json() if metadata else None,
                          "num_classes": session.num_classes})
    except EdgecnnError as exc:
        _answer(channel, {"ok": False, "error": str(exc)})
        return
    for line in requests:
        request = json.loads(line)
        if request.get("cmd") != "predict":
            return
        try:
            images = _images(Path(request["images"]))
            _answer(channel, _predict(session, images, request))
        except EdgecnnError as exc:
            _answer(channel, {"ok": False, "error": str(exc)})


def _images(path: Path):
    """The images of a request: a memory-mapped .npy, or the files a .json lists."""
    if path.suffix == ".json":
        from edgecnn.data.files import ImageFiles

        listing = json.loads(path.read_text(encoding="utf-8"))
        return ImageFiles(listing["paths"], listing["mode"])
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _predict(session, images, request: dict) -> dict:
    """Run every batch; write the logits, or with "top" only the ranked classes."""
    top, finite, outputs, parts = request.get("top"), True, 0, []
    for logits in session.predict_batches(images, batch_size=request["batch_size"]):
        finite = finite and bool(np.isfinite(logits).all())
        outputs = logits.shape[1]
        if top is not None:
            logits = np.argsort(-logits, axis=1, kind="stable")[:, :top].astype(np.int32)
        parts.append(logits)
    width = min(top, outputs) if top is not None else outputs
    result = np.concatenate(parts) if parts else np.zeros(
        (0, width), np.int32 if top is not None else np.float32)
    np.save(request["out"], np.ascontiguousarray(result))
    return {"ok": True, "outputs": outputs, "finite": finite}


def signal_name(number: int) -> str:
    """9 -> "SIGKILL (signal 9)"."""
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


class PredictWorker:
    """Parent-side handle: `info` once the artifact is open, `predict(images)` -> logits."""

    def __init__(self, path: Path, backend: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self._stderr: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")
        settings = {"path": str(path), "backend": backend, "threads": threads}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgecnn.runtime.predict_worker", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, encoding="utf-8", bufsize=1)
        self.info: dict = {}
        self.answer: dict = {}

    def ready(self) -> dict:
        self.info = self._receive("opening it")
        return self.info

    def predict(self, images: Path, batch_size: int, top: int | None = None) -> np.ndarray:
        """Logits (N, K) of the images in `images` (.npy, or a .json list of files), or
        with `top` the (N, min(top, K)) best classes; `self.answer` holds "outputs" (K)
        and "finite" (no NaN or infinite logit)."""
        fd, out = tempfile.mkstemp(prefix=".edgecnn-logits.", suffix=".npy")
        os.close(fd)
        try:
            request = {"cmd": "predict", "images": str(images), "out": out,
                       "batch_size": batch_size, **({"top": top} if top else {})}
            try:
                self._proc.stdin.write(json.dumps(request) + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass  # _receive reports how the worker ended
            self.answer = self._receive("running it")
            return np.load(out, allow_pickle=False)
        finally:
            Path(out).unlink(missing_ok=True)

    def _receive(self, doing: str) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            how = f"died of {signal_name(-code)}" if code < 0 else f"exited with code {code}"
            raise EdgecnnError(f"{self.path}: the runtime {how} while {doing}"
                               f"{self._last_error()}; the file is damaged or not supported")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise EdgecnnError(answer.get("error", f"{self.path}: inference failed"))
        return answer

    def _last_error(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines()
                 if ln.strip() and not ln.startswith("INFO:")]
        return f" ({lines[-1][:200]})" if lines else ""

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write('{"cmd": "quit"}\n')
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()


def main() -> None:
    """Entry point: keep a private copy of stdout for the protocol, send prints to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # runtimes' chatter must not corrupt it
    serve(json.loads(sys.argv[1]), sys.stdin, channel)


if __name__ == "__main__":
    main()
