"""Bench and validate results (`bench.BenchReport`, `validate.ValidationReport`) as rows,
rendered as rich tables or markdown; one `signed` format for every signed number.

One function builds the rows of each report, so the terminal table, the
markdown file and the GitHub step summary always show the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from edgecnn.runtime.stats import CONFIDENCE

if TYPE_CHECKING:  # the result types import this module to render themselves
    from edgecnn.runtime.bench import BenchReport
    from edgecnn.runtime.validate import ValidationReport

#: Columns given to a table when the output is a file or a CI log, not a terminal.
PIPE_WIDTH = 160


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{suffix}"


def signed(value: float, fmt: str = ".2f") -> str:
    """A number with its sign always shown, ASCII "+" / "-" ("+1.25", "-0.40"): drops,
    shifts and differences everywhere edgecnn prints them (tables, report.md, logs)."""
    return f"{value:+{fmt}}"


def _pct(value: float | None) -> str:
    return _num(None if value is None else value * 100, ".2f", "%")


BENCH_HEADERS = ("artifact", "backend", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                 "img/s", "size MB", "peak RSS MB", "speedup", "size ×")


def bench_rows(report: BenchReport) -> list[list[str]]:
    """One row per (thread count, artifact); ratios are against the first artifact."""
    return [[r.name, r.backend, str(r.threads or "default"),
             _num(r.latency.p50_ms, ".3f"), _num(r.latency.p90_ms, ".3f"),
             _num(r.latency.p99_ms, ".3f"), _num(r.latency.mean_ms, ".3f"),
             _num(r.throughput_ips, ",.1f"), _num(r.size_bytes / 1e6, ".3f"),
             _num(r.peak_rss_mb, ".1f"), _num(r.speedup_vs_first, ".2f", "×"),
             _num(r.size_vs_first, ".2f", "×")] for r in report.results]


DEVICE_BENCH_HEADERS = ("device", *BENCH_HEADERS)


def device_bench_rows(reports: list[BenchReport]) -> list[list[str]]:
    """`bench_rows` of several devices' reports in one table, the device first in each row."""
    return [[device_label(report), *row] for report in reports for row in bench_rows(report)]


def device_label(report: BenchReport | ValidationReport) -> str:
    """The `--remote` target a report came from ("local" for this machine)."""
    return (report.device or {}).get("target", "local")


VALIDATE_HEADERS = ("model", "backend", "precision", "top-1", "top-5", "drop (pp)",
                    "drop 95% CI", "agreement", "agreement 95% CI", "sample decides",
                    "result")


def _interval(ci: tuple[float, float] | None, fmt: str, scale: float = 1.0) -> str:
    return "–" if not ci else f"[{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]"


def _decides(decided: dict | None) -> str:
    """"yes" when the sample decides both bounds, else the bounds it cannot decide."""
    if not decided:
        return "–"
    open_bounds = [flag for key, flag in (("max_drop", "drop"), ("min_agreement", "agreement"))
                   if decided.get(key) == "undecided"]
    return "yes" if not open_bounds else "no: " + ", ".join(open_bounds)


def validate_rows(report: ValidationReport) -> list[list[str]]:
    """The reference first, then one row per candidate (intervals: 95%, see
    `runtime.stats`)."""
    ref = report.reference
    rows = [[f"{ref.name} (reference)", ref.backend, ref.precision or "–",
             _pct(ref.accuracy), _pct(ref.top5), "", "", "", "", "", ""]]
    for c in report.candidates:
        rows.append([c.name, c.backend, c.precision or "–", _pct(c.accuracy),
                     _pct(c.top5), signed(c.drop), _interval(c.drop_ci, "+.2f"),
                     _pct(c.agreement), _interval(c.agreement_ci, ".2f", 100.0),
                     _decides(c.decided), "pass" if c.passed else "FAIL"])
    return rows


def to_markdown(report: ValidationReport) -> str:
    """The table, the bounds and the classes that lost most, as GitHub markdown."""
    b = report.bounds
    lines = [f"### edgecnn validate: {report.data} ({report.num_images} images, "
             f"{report.num_classes} classes)", "",
             markdown_table(VALIDATE_HEADERS, validate_rows(report)),
             f"Bounds: top-1 drop ≤ {b.max_drop:.2f} pp, agreement ≥ "
             f"{b.min_agreement * 100:.2f}%, held against {gate_phrase(b.gate)}.",
             ""]
    for c in report.candidates:
        if c.worst_classes:
            lines.append(f"- {c.name}: {worst_line(c.worst_classes, report.min_class_images)}")
        for note in c.notes:
            lines.append(f"- {note}")
        for failure in c.failures:
            lines.append(f"- **FAIL** {failure}")
    return "\n".join(lines).rstrip() + "\n"


def gate_phrase(gate: str | None) -> str:
    """How a gate reads in a sentence: what it holds against the bounds."""
    pct = f"{int(round(CONFIDENCE * 100))}% CI"
    return {"confident-pass": f"the {pct}'s pessimistic end (--gate confident-pass)",
            "confident-fail": f"the {pct}'s optimistic end (--gate confident-fail)"}.get(
        gate or "point", "the measured values (--gate point)")


def worst_line(worst: tuple[dict, ...] | list[dict], min_class_images: int) -> str:
    """"classes that lost most (of those with >= 20 images): 3 (-11.1 pp of 36), ..."."""
    items = ", ".join(f"{w['class']} ({signed(-w['drop'], '.1f')} pp of "
                      f"{w.get('images', '?')})" for w in worst)
    return f"classes that lost most (of those with >= {min_class_images} images): {items}"


PROFILE_TOP_HEADERS = ("#", "layer", "op", "µs", "share", "cumulative")


def profile_top_rows(profile: dict, top: int) -> list[list[str]]:
    """The `top` most expensive ops of one profile, with their share of the total."""
    total = profile["total_us"] or 1.0
    ops = sorted(profile["ops"], key=lambda o: -o["us"])[:top]
    rows, cumulative = [], 0.0
    for rank, op in enumerate(ops, 1):
        cumulative += op["us"] / total
        rows.append([str(rank), op["layer"], op["op"], _num(op["us"], ",.1f"),
                     _pct(op["us"] / total), _pct(cumulative)])
    return rows


PROFILE_COMPARE_HEADERS = ("layer", "base µs", "other µs", "speed-up")


def profile_compare_rows(rows: list[dict]) -> list[list[str]]:
    """`profile.compare_layers` rows; a layer whose kinds differ is marked with "≠"."""
    return [[r["layer"] + ("" if r["matched"] else f" ≠ {r['other_layer']}"),
             _num(r["base_us"], ",.1f"), _num(r["other_us"], ",.1f"),
             _num(r["speedup"], ".2f", "×")] for r in rows]


DEVICE_VALIDATE_HEADERS = ("device", *VALIDATE_HEADERS)


def device_validate_rows(reports: list[ValidationReport]) -> list[list[str]]:
    """`validate_rows` of several devices' reports in one table, the device first."""
    return [[device_label(report), *row] for report in reports
            for row in validate_rows(report)]


def rich_table(title: str, headers: tuple[str, ...], rows: list[list[str]],
               text_columns: int = 1) -> Table:
    """The first `text_columns` columns left-aligned and never cut, the numbers
    right-aligned (a narrow terminal wraps the headers first)."""
    table = Table(title=title)
    for i, header in enumerate(headers):
        if i < text_columns:
            widest = max((len(row[i]) for row in rows), default=0)
            table.add_column(header, justify="left", no_wrap=True, min_width=widest)
        else:
            table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(headers: tuple[str, ...], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table ("|" in cells escaped)."""
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers)), *map(line, rows)]) + "\n"


def table_console(console: Console) -> Console:
    """`console` itself on a terminal; a wide one for pipes and CI logs (no wrapped cells)."""
    if console.is_terminal or console.width >= PIPE_WIDTH:
        return console
    return Console(file=console.file, width=PIPE_WIDTH)
