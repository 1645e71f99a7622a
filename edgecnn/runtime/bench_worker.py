"""The benchmark worker: one process per (artifact, thread count).

A fresh process per artifact is what makes its peak RSS its own (the
interpreter, the runtime library and the model, nothing else). The parent
(`edgecnn.runtime.bench`) keeps all workers of a thread count alive and asks
them in turn for short chunks of timed runs, so the artifacts are measured
interleaved, under the same machine conditions, never at the same time.

Protocol: JSON lines. The worker is started with its settings as one JSON
argument, answers {"ok": true, ...info} once the artifact is open, then
answers each request line: {"cmd": "warmup", "runs": n},
{"cmd": "run", "runs": n | "seconds": s, "rewarm": k} -> {"ok": true, "ns": [...]},
{"cmd": "stats"} -> peak RSS, {"cmd": "quit"}. Errors: {"ok": false, "error": "one line"}.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from edgecnn.errors import EdgecnnError


def peak_rss_mb() -> float | None:
    """This process's peak resident set size in MiB (None where it cannot be read).

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. Not ru_maxrss:
    Linux carries that over fork and exec, so a worker started by a large parent
    (a test runner holding torch) would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def time_runs(fn: Callable[[], Any], runs: int | None = None, seconds: float | None = None,
              rewarm: int = 0) -> list[int]:
    """Nanoseconds per call of `fn`, `runs` times or for `seconds` (at least once).

    `rewarm` untimed calls first restore caches after another worker ran; the
    garbage collector is paused so a collection never lands inside a timing.
    """
    for _ in range(rewarm):
        fn()
    timings: list[int] = []
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter_ns() + int((seconds or 0) * 1e9)
        while True:
            start = time.perf_counter_ns()
            fn()
            timings.append(time.perf_counter_ns() - start)
            if runs is not None and len(timings) >= runs:
                break
            if runs is None and time.perf_counter_ns() >= deadline:
                break
    finally:
        gc.enable()
    return timings


def _open(settings: dict) -> tuple[Callable[[], Any], dict]:
    from edgecnn.runtime.session import choose_backend, open_session

    path = Path(settings["path"])
    chosen = choose_backend(path, settings.get("backend", "auto"))
    importlib.import_module(chosen.module)  # the runtime library belongs to the baseline
    baseline = peak_rss_mb()
    session = open_session(path, chosen.name, threads=settings["threads"])
    call = session.invoker(session.random_input(settings["batch"]))
    call()  # the first call allocates; it is neither warm-up nor timed
    metadata = session.metadata
    info = {
        "backend": session.backend,
        "input": session.expected_shape(),
        "precision": metadata.precision if metadata else None,
        "model": metadata.model if metadata else None,
        "has_metadata": metadata is not None,
        "baseline_rss_mb": baseline,
    }
    return call, info


def _answer(channel: IO[str], message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def serve(settings: dict, requests: IO[str], channel: IO[str]) -> None:
    """Open the artifact, then answer requests until "quit" or end of input."""
    try:
        fn, info = _open(settings)
    except EdgecnnError as exc:
        _answer(channel, {"ok": False, "error": str(exc)})
        return
    _answer(channel, {"ok": True, **info})
    for line in requests:
        request = json.loads(line)
        cmd = request.get("cmd")
        try:
            if cmd == "warmup":
                if request["runs"] > 0:
                    time_runs(fn, runs=request["runs"])
                _answer(channel, {"ok": True})
            elif cmd == "run":
                ns = time_runs(fn, runs=request.get("runs"), seconds=request.get("seconds"),
                               rewarm=request.get("rewarm", 0))
                _answer(channel, {"ok": True, "ns": ns})
            elif cmd == "stats":
                _answer(channel, {"ok": True, "peak_rss_mb": peak_rss_mb()})
            elif cmd == "quit":
                return
            else:
                _answer(channel, {"ok": False, "error": f"unknown worker command {cmd!r}"})
        except EdgecnnError as exc:
            _answer(channel, {"ok": False, "error": str(exc)})


def main() -> None:
    """Entry point: keep a private copy of stdout for the protocol, send prints to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # runtimes' chatter must not corrupt it
    serve(json.loads(sys.argv[1]), sys.stdin, channel)


if __name__ == "__main__":
    main()
