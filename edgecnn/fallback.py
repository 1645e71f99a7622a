"""Accuracy-aware quantization: layers leave int8 until the drop is within the bound.

`export --int8 --max-drop X --fallback int16|float`: when an int8 artifact's top-1
drop exceeds X, `edgecnn inspect` ranks the layers by the error each adds by itself
(own SQNR, lowest first) on the last `HOLDOUT_IMAGES` images of the training split,
never on the validation images that decide the gate. The worst layer moves to
int16 (TFLite 16x8: int16 activations, int8 weights) or float together with the
layers that write the tensors it reads: a layer's own error includes the
quantization of its inputs, which only their writers can remove
(`edgecnn.quant.precision`; the same holds for int16). The model is quantized and
exported again, the drop re-measured, and the next group moves, until every int8
artifact is within X or no layer is left. A step that makes the largest drop
worse than the last kept step's is reverted (its layers go back to int8) and the
next group is tried, as NNCF's loop does; when the last step tried was reverted,
the kept state is quantized and exported again, so the files on disk are the kept
ones. Each step is recorded (`Step`): what moved, the drops, the latency at one
thread, whether it was reverted; report.json and report.md say what was done.

int16 repairs what an activation range crushes; it cannot repair int8 weights (16x8
keeps them int8): a layer whose error is in its weights needs float. With `int16` the
groups may also hold the ops between layers that have 16x8 kernels (a pool, an add, a
mean: `quant.precision.int16_capable_ops`): a tensor is int16 only when its writer and
every reader are, so an add reading an int16 layer's output would requantize it to int8
unless it moves too.

The ranking is NNCF's accuracy-aware loop (rank by a per-layer metric, revert the
worst, re-validate) with the metric of `edgecnn inspect`, measured on the
artifact and the runtime that ship.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecnn.errors import EdgecnnError, ParameterError

FALLBACKS = ("none", "int16", "float")
HOLDOUT_IMAGES = 64


@dataclass
class Step:
    """One state of the loop: step 0 is plain int8, each later one moved `moved`."""

    moved: list[str]
    float_layers: list[str]
    drops: dict[str, float]
    p50_ms: dict[str, float] = field(default_factory=dict)  # int8 artifacts, 1 thread
    int16_layers: list[str] = field(default_factory=list)
    reverted: bool = False

    def within(self, max_drop: float) -> bool:
        return all(d <= max_drop for d in self.drops.values())

    def worse_than(self, other: Step) -> bool:
        """The largest drop over the int8 artifacts is larger than `other`'s."""
        return max(self.drops.values(), default=0.0) > max(other.drops.values(), default=0.0)


def run_steps(first: Step, groups: list[list[str]],
              attempt: Callable[[list[str]], tuple[Step, object]], max_drop: float,
              on_step: Callable[[int, Step], None] | None = None,
              ) -> tuple[list[Step], object | None]:
    """The loop: from `first` (plain int8, not within `max_drop`), try each group of
    `groups` in order with everything kept so far; keep a step unless it makes the
    drop worse (`Step.worse_than` the last kept step), stop when within the bound.

    attempt(layers) quantizes with `layers` moved, exports and measures; it returns
    the Step (its `moved` is set here) and an opaque state (the pipeline's metrics and
    validation). on_step(index, step) is called after each step. Returns every step
    and the kept state: None when no step was kept (the step-0 files are back on disk).
    """
    steps, kept, moved, state = [first], first, [], None
    for group in groups:
        new = [n for n in group if n not in moved and n not in kept.float_layers
               and n not in kept.int16_layers]
        if not new:
            continue
        step, result = attempt(moved + new)
        step.moved = new
        step.reverted = step.worse_than(kept)
        steps.append(step)
        if on_step is not None:
            on_step(len(steps) - 1, step)
        if step.reverted:
            continue
        moved, kept, state = moved + new, step, result
        if step.within(max_drop):
            break
    if steps[-1].reverted:  # the files on disk are the reverted trial's: back to the kept state
        _, state = attempt(moved)
        if not moved:
            state = None
    return steps, state


def check_fallback(fallback: str) -> None:
    if fallback not in FALLBACKS:
        raise ParameterError("fallback", f"must be one of {', '.join(FALLBACKS)}, "
                             f"got {fallback!r}")


def _ranked(report: dict) -> list[dict]:
    """The report's layers by own SQNR on its first runtime, lowest first; exact layers
    (infinite SQNR, null in JSON) left out: moving them gains nothing."""
    kernels = report["runtimes"][0]

    def own(entry: dict) -> float | None:
        return entry["runtimes"][kernels]["own_sqnr_db"]

    return sorted((e for e in report["layers"] if own(e) is not None and math.isfinite(own(e))),
                  key=own)


def rank_groups(report: dict, layers: list[str], *, float_input: bool = False,
                ) -> list[list[str]]:
    """Groups of layer names to move, in order: each ranked layer (own SQNR on the
    report's first runtime, lowest first) with the layers writing its input tensors.
    Only names in `layers` move: the program's conv / linear layers, and for int16 the
    ops with 16x8 kernels too (named by the tensor their op writes, as `inspect` names
    them: the entry's layer, else its tensor, the candidate's name, which is the torch
    program's when the fp32 reference's graph differs); a ranked entry of another kind
    contributes the movable layers that feed it. A layer
    that reads the model input moves only when `float_input` (io float): a float first
    layer leaves the model input unquantized, and an int16 one makes it int16, which int8
    / uint8 io cannot have."""
    known = set(layers)
    by_tensor = {e["tensor"]: e for e in report["layers"]}

    def name(entry: dict) -> str:
        return entry["layer"] if entry["layer"] in known else entry["tensor"]

    ranked = _ranked(report)
    reads_input = {name(e) for e in report["layers"]
                   if any(by_tensor.get(t, {}).get("op") == "input" for t in e["inputs"])}
    movable = known if float_input else known - reads_input
    groups: list[list[str]] = []
    for entry in ranked:
        names = [name(entry), *(name(by_tensor[t]) for t in entry["inputs"] if t in by_tensor)]
        group = [n for n in dict.fromkeys(names) if n in movable]
        if group and set(group) not in [set(g) for g in groups]:
            groups.append(group)
    return groups


def rank_layers(reference: Path, candidates: list[Path], data: str, seed: int) -> dict:
    """`edgecnn inspect` of the int8 .tflite (else .onnx) among `candidates` (int8 by their
    embedded records, whatever the file names) on the training split's tail."""
    from edgecnn.runtime.metadata import read_metadata
    from edgecnn.verify.inspect import run_inspect

    int8 = [Path(p) for p in candidates
            if (record := read_metadata(p)) is not None and record.precision == "int8"]
    if not int8:
        raise EdgecnnError(f"no int8 artifact among {', '.join(map(str, candidates))} "
                           "(by their embedded edgecnn records)")
    chosen = next((p for p in int8 if p.suffix == ".tflite"), int8[0])
    return run_inspect(reference, chosen, data, images=HOLDOUT_IMAGES, seed=seed,
                       split="train_tail")


def patterns(names: list[str]) -> tuple[str, ...]:
    """`--keep-float` / `--int16` patterns that match exactly these layer names."""
    return tuple(re.escape(n) for n in names)


def summary(mode: str, max_drop: float, report: dict | None, steps: list[Step]) -> dict:
    """What report.json records under "fallback"."""
    ranked = []
    if report is not None:
        kernels = report["runtimes"][0]
        ranked = [{"layer": e["layer"], "tensor": e["tensor"],
                   "own_sqnr_db": e["runtimes"][kernels]["own_sqnr_db"]}
                  for e in _ranked(report)[:10]]
    final = next(s for s in reversed(steps) if not s.reverted)  # the state on disk
    return {"mode": mode, "max_drop": max_drop, "within_bound": final.within(max_drop),
            "moved": [n for s in steps if not s.reverted for n in s.moved],
            "ranking": {"images": report["images"] if report else 0,
                        "split": f"training split, last {HOLDOUT_IMAGES} images",
                        "candidate": Path(report["candidate"]).name if report else None,
                        "runtime": report["runtimes"][0] if report else None,
                        "worst": ranked},
            "steps": [asdict(s) for s in steps]}


def markdown(fallback: dict | None) -> list[str]:
    """report.md's section: one row per step."""
    if not fallback or not fallback.get("steps"):
        return []
    from edgecnn.runtime.tables import markdown_table, signed

    steps = fallback["steps"]
    heading = f"## Fallback to {fallback['mode']}"
    if len(steps) == 1 and fallback["within_bound"]:
        return ["", heading, "",
                f"--fallback {fallback['mode']}: every int8 artifact is within "
                f"{fallback['max_drop']} points; nothing moved."]
    names = list(steps[0]["drops"])
    head = ["step", f"moved to {fallback['mode']}", *[f"{n} drop" for n in names],
            *[f"{n} p50 1t ms" for n in names]]
    rows = [[str(i), (", ".join(s["moved"]) or "(int8)")
             + (" (reverted: worse)" if s.get("reverted") else ""),
             *[signed(s["drops"][n]) for n in names],
             *[f"{s['p50_ms'].get(n, float('nan')):.3f}" for n in names]]
            for i, s in enumerate(steps)]
    if fallback.get("error"):
        return ["", heading, "",
                f"--fallback {fallback['mode']} could not rank the layers: {fallback['error']}"]
    verdict = ("within" if fallback["within_bound"] else "still outside")
    ranking = fallback["ranking"]
    lines = ["", heading, "",
             f"--fallback {fallback['mode']}: layers ranked by the error each adds by itself "
             f"(edgecnn inspect on {ranking['candidate']}, {ranking['runtime']}, "
             f"{ranking['split']}); moved one group at a time until the drop is within "
             f"{fallback['max_drop']} points: {verdict} after {len(steps) - 1} step(s). Moved: "
             f"{', '.join(fallback['moved']) or 'nothing'}. A step that made the drop worse "
             "was reverted.", "",
             markdown_table(head, rows).rstrip()]
    return lines
