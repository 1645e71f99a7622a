"""report.json, report.md and latency_vs_accuracy.png for one `export --int8` run."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn.fallback import markdown as fallback_markdown
from edgecnn.runtime.tables import markdown_table, signed
from edgecnn.util import atomic_write

if TYPE_CHECKING:
    from edgecnn.runtime.bench import BenchReport
    from edgecnn.runtime.validate import ValidationReport

#: short enough that the table fits an 80-column terminal
SUMMARY_HEADERS = ("artifact", "size MB", "top-1", "drop pp", "agree", "p50 1t ms", "p50 all ms",
                   "vs fp32")


@dataclass(frozen=True)
class ArtifactReport:
    """One artifact of an `export --int8` run (an entry of report.json's "artifacts").

    `format` is the file's suffix, `precision` its embedded edgecnn record's; accuracy
    and agreement are fractions, `drop` in percentage points against the fp32 reference
    (0 for the reference itself), with their 95% intervals when the artifact was a
    candidate; `latency_ms_p50` maps thread count to p50 ms (batch 1);
    `speedup_vs_fp32` is p50 at the fewest threads against the fp32 artifact of the
    same format (None without one).
    """

    name: str
    path: str
    format: str
    precision: str | None
    size_bytes: int
    accuracy: float
    drop: float
    agreement: float
    latency_ms_p50: dict[int, float]
    speedup_vs_fp32: float | None
    passed: bool
    drop_ci: tuple[float, float] | None = None
    agreement_ci: tuple[float, float] | None = None

    @property
    def p50_fewest_threads_ms(self) -> float:
        return self.latency_ms_p50[min(self.latency_ms_p50)]

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry (keys in this order; the intervals only when measured)."""
        entry = {"name": self.name, "path": self.path, "format": self.format,
                 "precision": self.precision, "size_bytes": self.size_bytes,
                 "accuracy": self.accuracy, "drop": self.drop, "agreement": self.agreement,
                 "latency_ms_p50": {str(k): v for k, v in self.latency_ms_p50.items()},
                 "speedup_vs_fp32": self.speedup_vs_fp32, "passed": self.passed}
        if self.drop_ci is not None:
            entry.update(drop_ci=list(self.drop_ci), agreement_ci=list(self.agreement_ci))
        return entry

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> ArtifactReport:
        """The inverse of `to_dict` (a report.json entry)."""
        return cls(name=entry["name"], path=entry["path"], format=entry["format"],
                   precision=entry["precision"], size_bytes=entry["size_bytes"],
                   accuracy=entry["accuracy"], drop=entry["drop"],
                   agreement=entry["agreement"],
                   latency_ms_p50={int(k): v for k, v in entry["latency_ms_p50"].items()},
                   speedup_vs_fp32=entry["speedup_vs_fp32"], passed=entry["passed"],
                   drop_ci=tuple(entry["drop_ci"]) if "drop_ci" in entry else None,
                   agreement_ci=(tuple(entry["agreement_ci"]) if "agreement_ci" in entry
                                 else None))


def artifact_reports(validation: ValidationReport, bench: BenchReport,
                     ) -> list[ArtifactReport]:
    """One `ArtifactReport` per artifact, the reference first, then the candidates in
    order (`validation`'s), with `bench`'s p50 per thread count (`bench` measured every
    artifact of `validation`, with thread counts that are integers). Format and precision
    are each file's own (its suffix and embedded record), never read from its name; the
    speed-up is against the first bench row of the same format whose precision is fp32."""
    reference = validation.reference
    p50: dict[str, dict[int, float]] = {}
    size: dict[str, int] = {}
    fp32: dict[str, str] = {}  # format -> the first fp32 artifact of that format
    for row in bench.results:
        p50.setdefault(row.artifact, {})[row.threads] = row.p50_ms
        size[row.artifact] = row.size_bytes
        if row.precision == "fp32":
            fp32.setdefault(row.format, row.artifact)
    reports = []
    for entry in (reference, *validation.candidates):
        latency = p50[entry.artifact]
        one = min(latency)
        base = fp32.get(entry.format)
        candidate = entry is not reference
        reports.append(ArtifactReport(
            name=entry.name, path=entry.artifact, format=entry.format,
            precision=entry.precision, size_bytes=size[entry.artifact],
            accuracy=entry.accuracy, drop=entry.drop if candidate else 0.0,
            agreement=entry.agreement if candidate else 1.0, latency_ms_p50=latency,
            speedup_vs_fp32=p50[base][one] / latency[one] if base is not None else None,
            passed=entry.precision == "fp32" or not candidate or entry.passed,
            drop_ci=entry.drop_ci if candidate else None,
            agreement_ci=entry.agreement_ci if candidate else None))
    return reports


@dataclass
class Report:
    """What `edgecnn export --int8` measured. `data` is exactly what report.json holds."""

    data: dict[str, Any] = field(default_factory=dict)
    directory: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.data.get("passed"))

    def failures(self) -> list[str]:
        """One line per reason the gate failed (reference floor, drop, agreement)."""
        return list(self.data.get("failures", []))

    @property
    def artifacts(self) -> list[ArtifactReport]:
        return [ArtifactReport.from_dict(a) for a in self.data.get("artifacts", [])]

    def artifact(self, name: str) -> ArtifactReport:
        """The artifact whose file is called `name`; KeyError when there is none."""
        for entry in self.artifacts:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def summary_rows(self) -> list[list[str]]:
        rows = []
        for a in self.artifacts:
            p50 = a.latency_ms_p50
            rows.append([
                a.name, f"{a.size_bytes / 1e6:.2f}", f"{100 * a.accuracy:.2f}%",
                signed(a.drop), f"{100 * a.agreement:.1f}%",
                f"{p50[min(p50)]:.2f}", f"{p50[max(p50)]:.2f}",
                f"{a.speedup_vs_fp32:.2f}x" if a.speedup_vs_fp32 else "1.00x",
            ])
        return rows

    def to_markdown(self) -> str:
        d = self.data
        lines = [f"# edgecnn report: {d['model']} on {d['data']} ({d['method'].upper()})", "",
                 f"fp32 reference accuracy {100 * d['reference_accuracy']:.2f}% on "
                 f"{d['val_images']} validation images; bound: int8 drop <= {d['max_drop']} "
                 f"points -> **{'PASS' if self.passed else 'FAIL'}**.", "",
                 markdown_table(SUMMARY_HEADERS, self.summary_rows()).rstrip()]
        intervals = interval_lines(self)
        if intervals:
            lines += ["", *[f"- {line}" for line in intervals[:-1]], "", intervals[-1]]
        m = d.get("machine", {})
        lines += ["", f"Latency: batch 1, medians, on {m.get('cpu', '?')} "
                      f"({m.get('usable_cores', '?')} cores). Speed-up: p50 at 1 thread against "
                      "the fp32 artifact of the same format.", "", "Stages:", ""]
        lines += [f"- {name}: {s['seconds']:.1f}s{' (reused)' if s.get('reused') else ''}"
                  for name, s in d.get("stages", {}).items()]
        lines += _precision_markdown(d)
        lines += _ptq_methods_markdown(d)
        lines += fallback_markdown(d.get("fallback"))
        lines += _inspect_markdown(d.get("inspect"))
        return "\n".join(lines) + "\n"

    def write(self, directory: Path) -> None:
        directory = Path(directory)
        with atomic_write(directory / "report.json") as tmp:
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        with atomic_write(directory / "report.md") as tmp:
            tmp.write_text(self.to_markdown())
        plot_latency_vs_accuracy(self, directory / "latency_vs_accuracy.png")
        self.directory = directory


def interval_lines(report: Report) -> list[str]:
    """The 95% confidence intervals behind the table's drop and agreement (paired, see
    `runtime.validate`), one line per artifact that is not fp32, and the sample size."""
    lines = [f"{a.name}: drop {signed(a.drop)} pp [{signed(a.drop_ci[0])}, "
             f"{signed(a.drop_ci[1])}], agree {100 * a.agreement:.1f}% "
             f"[{100 * a.agreement_ci[0]:.1f}, {100 * a.agreement_ci[1]:.1f}]"
             for a in report.artifacts if a.drop_ci is not None and a.precision != "fp32"]
    if lines:
        lines.append(f"(95% confidence intervals, {report.data['val_images']} validation "
                     "images: more images narrow them)")
    return lines


def precision_lines(data: dict) -> list[str]:
    """One line per precision other than int8 in the int8 artifacts (float layers, float
    islands: ops with no int8 TFLite kernel, int16 (16x8) layers and ops), or none when every
    layer is int8."""
    lines = []
    if data.get("float_layers"):
        lines.append(f"float layers ({len(data['float_layers'])}): "
                     f"{', '.join(data['float_layers'])}")
    if data.get("float_islands"):
        lines.append(f"float islands, no int8 kernel ({len(data['float_islands'])}): "
                     f"{', '.join(data['float_islands'])}")
    if data.get("int16_layers"):
        lines.append(f"int16 layers, 16x8 ({len(data['int16_layers'])}): "
                     f"{', '.join(data['int16_layers'])}")
    if data.get("int16_ops"):
        lines.append(f"int16 ops, 16x8 ({len(data['int16_ops'])}): "
                     f"{', '.join(data['int16_ops'])}")
    return lines


def ptq_method_lines(data: dict) -> list[str]:
    """One line per PTQ step applied (`--cle`, `--bias-correction`), with what it did;
    none for plain PTQ or QAT."""
    record = data.get("ptq_methods") or {}
    lines = []
    if "cle" in record:
        cle = record["cle"]
        skipped = Counter(op for _, op in cle["skipped_activation"])
        why = ", ".join(f"{op} x{n}" for op, n in skipped.items())
        lines.append(f"cross-layer equalization: {len(cle['pairs'])} conv pair(s) equalized "
                     f"after folding {cle['batch_norms_folded']} BatchNorm(s)"
                     + (f"; {sum(skipped.values())} pair(s) left alone, their activation "
                        f"not positively homogeneous ({why})" if skipped else ""))
    if "bias_correction" in record:
        bc = record["bias_correction"]
        lines.append(f"bias correction: {bc['layers']} layer(s) corrected on {bc['images']} "
                     f"calibration images, mean |bias shift| {bc['mean_abs_shift']:.3g}")
    return lines


def _ptq_methods_markdown(data: dict) -> list[str]:
    lines = ptq_method_lines(data)
    return ["", "## PTQ steps", "", *[f"- {line}" for line in lines]] if lines else []


def _precision_markdown(data: dict) -> list[str]:
    """The layers that are not int8 (`--keep-float`, float islands, `--int16`), so the
    report says what was done."""
    lines = precision_lines(data)
    if not lines:
        return []
    return ["", "## Layers not in int8", "", *[f"- {line}" for line in lines]]


def _inspect_markdown(summary: dict | None) -> list[str]:
    """The five layers adding most int8 error and the SQNR plot (`edgecnn inspect`)."""
    if not summary:
        return []
    from edgecnn.verify.inspect import REPORT_HEADERS, report_rows

    lines = ["", "## Where the int8 error comes from", ""]
    if summary.get("error"):
        return [*lines, f"inspect could not run: {summary['error']}"]
    lines += [f"{summary['candidate']} on {summary['runtime']}, {summary['images']} validation "
              "images: the layers that add most error by themselves (own: the layer alone on "
              "the fp32 inputs, quantized; ch: median per-channel SQNR). Every layer: "
              f"`{summary['json']}`.", "", markdown_table(REPORT_HEADERS,
                                                          report_rows(summary)).rstrip()]
    if summary.get("plot"):
        lines += ["", f"![SQNR along depth]({summary['plot']})"]
    return lines


def plot_latency_vs_accuracy(report: Report, path: Path) -> None:
    """One point per artifact: p50 latency at 1 thread against top-1 accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    markers = {"onnx": "o", "tflite": "s"}
    colors = {"fp32": "tab:blue", "int8": "tab:orange"}
    for a in report.artifacts:
        ax.scatter(a.p50_fewest_threads_ms, 100 * a.accuracy, s=60,
                   marker=markers.get(a.format, "o"), color=colors.get(a.precision, "tab:gray"),
                   zorder=3, label=a.name)
    d = report.data
    ax.axhline(100 * d["reference_accuracy"] - d["max_drop"], color="tab:red", lw=0.8, ls="--",
               label=f"fp32 - {d['max_drop']} pp")
    ax.set_xlabel("p50 latency, batch 1, 1 thread (ms)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{d['model']} on {d['data']}: latency vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
