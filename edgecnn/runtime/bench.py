"""Latency benchmark of one or more artifacts: p50/p90/p99/mean, throughput, size, peak RSS.

Each (artifact, thread count) runs in its own worker process (see
`bench_worker`), so its peak RSS is its own. The workers of one thread count
take turns in short chunks, in a rotating order, so a slow drift of the
machine (another job, thermal throttling) affects every artifact alike
instead of whichever happened to run last. Only the model invocation is
timed (`time.perf_counter_ns`): preprocessing and the Python loop are not,
and warm-up runs are excluded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.flags import check, check_all, check_fields
from edgecnn.progress import progress_bar
from edgecnn.runtime.machine import cpu_temperature_c, describe_machine
from edgecnn.util import require_file


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; `runs` and `seconds` are alternatives (runs=200 when neither)."""

    threads: tuple[int | None, ...] = (None,)
    batch: int = 1
    warmup: int = 20
    runs: int | None = None
    seconds: float | None = None
    rounds: int = 10
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.runs is not None and self.seconds is not None:
            raise EdgecnnError("pass either runs or seconds, not both")
        if self.runs is None and self.seconds is None:
            object.__setattr__(self, "runs", 200)
        check_all(runs=self.runs, seconds=self.seconds)
        check_fields(batch=self.batch, warmup=self.warmup)
        if not self.threads:
            raise ParameterError("threads", f"must name at least one thread count, got "
                                            f"{self.threads!r}")
        for threads in self.threads:
            check("threads", threads)
        if self.rounds < 1:
            raise ParameterError("rounds", f"must be at least 1, got {self.rounds}")

    def chunks(self) -> list[dict]:
        """The per-round requests each worker receives (runs split evenly, or time slices)."""
        if self.seconds is not None:
            return [{"seconds": self.seconds / self.rounds}] * self.rounds
        rounds = min(self.rounds, self.runs)
        return [{"runs": self.runs // rounds + (1 if i < self.runs % rounds else 0)}
                for i in range(rounds)]


def parse_threads(text: str) -> tuple[int | None, ...]:
    """"1,2,4" -> (1, 2, 4); "" or "auto" -> (None,) (the runtime's default)."""
    if text.strip().lower() in ("", "auto", "default"):
        return (None,)
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ParameterError("threads", f"expects comma-separated integers such as 1,2,4; "
                                        f"got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 1024:
        raise ParameterError("threads", f"expects integers in 1..1024, got {text!r}")
    return values


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies, in milliseconds."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    @classmethod
    def from_ns(cls, timings: list[int]) -> LatencyStats:
        ms = np.asarray(timings, np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(p50), float(p90), float(p99), float(ms.mean()),
                   float(ms.min()), float(ms.max()), float(ms.std()))


@dataclass(frozen=True)
class BenchResult:
    """One (artifact, thread count) row of a benchmark.

    `precision` and `model` come from the artifact's embedded edgecnn record (None
    without one), `backend` is the runtime that ran it, `input` describes the model
    input it was fed ("(1, 8, 8, 1) int8 NHWC"). Sizes in bytes, memory in MB, times in
    ms (`latency`); ratios are against the first artifact at the same thread count.
    `sha256` is set by the CLI, `remote_artifact` (the file's path on the device) by
    `bench --remote`.
    """

    artifact: str
    name: str
    backend: str
    input: str
    precision: str | None
    model: str | None
    has_metadata: bool
    baseline_rss_mb: float | None
    threads: int | None
    batch: int
    latency: LatencyStats
    throughput_ips: float | None
    size_bytes: int
    peak_rss_mb: float | None
    speedup_vs_first: float | None
    size_vs_first: float | None
    sha256: str | None = None
    remote_artifact: str | None = None

    @property
    def format(self) -> str:
        """"onnx", "tflite", ... : the artifact's suffix."""
        return Path(self.artifact).suffix.lstrip(".")

    @property
    def p50_ms(self) -> float:
        return self.latency.p50_ms

    def to_dict(self) -> dict[str, Any]:
        """One row of `edgecnn bench --json`'s "results" (keys in this order)."""
        row = {"artifact": self.artifact, "name": self.name, "backend": self.backend,
               "input": self.input, "precision": self.precision,
               "model": self.model, "has_metadata": self.has_metadata,
               "baseline_rss_mb": self.baseline_rss_mb, "threads": self.threads,
               "batch": self.batch, **asdict(self.latency),
               "throughput_ips": self.throughput_ips, "size_bytes": self.size_bytes,
               "peak_rss_mb": self.peak_rss_mb, "speedup_vs_first": self.speedup_vs_first,
               "size_vs_first": self.size_vs_first}
        if self.sha256 is not None:
            row["sha256"] = self.sha256
        if self.remote_artifact is not None:
            row["remote_artifact"] = self.remote_artifact
        return row

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> BenchResult:
        """The inverse of `to_dict` (a device's `bench --json` row)."""
        latency = LatencyStats(**{f.name: row[f.name] for f in fields(LatencyStats)})
        return cls(artifact=row["artifact"], name=row["name"], backend=row["backend"],
                   input=row["input"], precision=row["precision"],
                   model=row["model"], has_metadata=row["has_metadata"],
                   baseline_rss_mb=row["baseline_rss_mb"], threads=row["threads"],
                   batch=row["batch"], latency=latency, throughput_ips=row["throughput_ips"],
                   size_bytes=row["size_bytes"], peak_rss_mb=row["peak_rss_mb"],
                   speedup_vs_first=row["speedup_vs_first"],
                   size_vs_first=row["size_vs_first"], sha256=row.get("sha256"),
                   remote_artifact=row.get("remote_artifact"))


@dataclass(frozen=True)
class BenchReport:
    """What `run_bench` measured: the rows, the machine (`machine.describe_machine`, plus
    the CPU temperature before and after) and the settings; `device` is the `--remote`
    setup (None on this machine)."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    results: tuple[BenchResult, ...]
    device: dict[str, Any] | None = None

    def find(self, artifact: str | Path, threads: int | None) -> BenchResult:
        """The row of `artifact` (its path) at `threads`; KeyError when not measured."""
        for row in self.results:
            if row.artifact == str(artifact) and row.threads == threads:
                return row
        raise KeyError(f"{artifact} at threads={threads}")

    def to_dict(self) -> dict[str, Any]:
        """`edgecnn bench --json`."""
        report = {"machine": self.machine, "settings": self.settings,
                  "results": [row.to_dict() for row in self.results]}
        if self.device is not None:
            report["device"] = self.device
        return report

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> BenchReport:
        """The inverse of `to_dict` (a device's `bench --json`)."""
        return cls(machine=report["machine"], settings=report["settings"],
                   results=tuple(BenchResult.from_dict(r) for r in report["results"]),
                   device=report.get("device"))


class _Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, path: Path, threads: int | None, config: BenchConfig) -> None:
        self.path = path
        self._stderr: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8")
        settings = {"path": str(path), "backend": config.backend, "threads": threads,
                    "batch": config.batch}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgecnn.runtime.bench_worker", json.dumps(settings)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, encoding="utf-8", bufsize=1)
        self.info: dict = {}

    def ready(self) -> dict:
        self.info = self._receive()
        return self.info

    def ask(self, **request: object) -> dict:
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # _receive reports how the worker ended
        return self._receive()

    def _receive(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            raise EdgecnnError(f"{self.path}: the benchmark process died ({how})"
                               f"{self._last_error()}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise EdgecnnError(answer.get("error", f"{self.path}: benchmark failed"))
        return answer

    def _last_error(self) -> str:
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines()
                 if ln.strip() and not ln.startswith("INFO:")]
        return f": {lines[-1]}" if lines else ""

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


def _bench_thread_count(paths: list[Path], threads: int | None, config: BenchConfig,
                        bar) -> list[BenchResult]:
    workers = [_Worker(path, threads, config) for path in paths]
    try:
        for worker in workers:
            worker.ready()
        for worker in workers:
            worker.ask(cmd="warmup", runs=config.warmup)
        timings: list[list[int]] = [[] for _ in paths]
        rewarm = min(2, config.warmup)
        for round_index, chunk in enumerate(config.chunks()):
            shift = round_index % len(workers)
            for i in [*range(shift, len(workers)), *range(shift)]:
                answer = workers[i].ask(cmd="run", rewarm=rewarm if round_index else 0, **chunk)
                timings[i].extend(answer["ns"])
                bar.advance(f"{paths[i].name} t={threads or 'default'}")
        peaks = [worker.ask(cmd="stats")["peak_rss_mb"] for worker in workers]
    finally:
        for worker in workers:
            worker.close()
    stats = [LatencyStats.from_ns(ns) for ns in timings]
    sizes = [path.stat().st_size for path in paths]
    results = []
    for path, worker, latency, size, peak in zip(paths, workers, stats, sizes, peaks,
                                                 strict=True):
        info = worker.info
        results.append(BenchResult(
            artifact=str(path), name=path.name, backend=info["backend"],
            input=info["input"], precision=info["precision"],
            model=info["model"], has_metadata=info["has_metadata"],
            baseline_rss_mb=info["baseline_rss_mb"], threads=threads, batch=config.batch,
            latency=latency,
            throughput_ips=config.batch * 1000.0 / latency.mean_ms if latency.mean_ms else None,
            size_bytes=size, peak_rss_mb=peak,
            speedup_vs_first=stats[0].p50_ms / latency.p50_ms if latency.p50_ms else None,
            size_vs_first=size / sizes[0] if sizes[0] else None))
    return results


def run_bench(paths: list[Path], config: BenchConfig, *, progress: bool = True) -> BenchReport:
    """Benchmark `paths` at every thread count: one `BenchResult` per (thread count,
    artifact), in that order; `BenchReport.to_dict()` is `edgecnn bench --json`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise EdgecnnError("bench needs at least one artifact")
    for path in paths:
        require_file(path)
    chunks = config.chunks()
    results = []
    temperature_before = cpu_temperature_c()
    with progress_bar("bench", len(config.threads) * len(chunks) * len(paths),
                      enabled=progress) as bar:
        for threads in config.threads:
            results.extend(_bench_thread_count(paths, threads, config, bar))
    settings = asdict(config)
    settings.update(threads=list(config.threads), timed="model invocation only "
                    "(preprocessing excluded), one process per artifact and thread count, "
                    f"{len(chunks)} interleaved rounds")
    machine = describe_machine()
    machine["temperature_c"] = {"before": temperature_before, "after": cpu_temperature_c()}
    return BenchReport(machine=machine, settings=settings, results=tuple(results))
