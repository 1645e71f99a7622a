"""The accuracy gate: candidates against a reference on a validation split.

For CI: top-1 (and top-5 with more than 5 classes) of the reference and of
each candidate, the drop in percentage points with its paired 95% confidence
interval (Tango's score interval on the images only one of the two got right,
`stats.paired_difference_interval`), top-1 agreement with the reference with
its Wilson interval, whether the sample is large enough to decide each bound,
and the classes that lost most (only classes with at least `MIN_CLASS_IMAGES`
images). `Bounds.gate` says which number is held against the bounds: the
point estimate, the interval's pessimistic end ("confident-pass": pass only
when the sample shows the candidate is within) or its optimistic end
("confident-fail": fail only when the sample shows it is outside). The CLI
turns the verdict into exit code 0 or 1 (2 is for usage and input errors).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.config import ArtifactMetadata
from edgecnn.errors import EdgecnnError, ParameterError
from edgecnn.flags import check_fields
from edgecnn.runtime.metadata import parse_metadata, require_record
from edgecnn.runtime.predict_worker import PredictWorker
from edgecnn.runtime.stats import (
    CONFIDENCE,
    images_to_decide,
    paired_difference_interval,
    wilson_interval,
)

#: What `--gate` holds against the bounds: the point estimate, or one end of the 95% CI.
GATES = ("point", "confident-pass", "confident-fail")
#: A class gets a "lost most" line only with at least this many validation images: one
#: image is then at most 5 percentage points of the class's accuracy.
MIN_CLASS_IMAGES = 20


@dataclass(frozen=True)
class Bounds:
    """How much worse than the reference a candidate may be, and how that is judged.

    `gate`: "point" holds the measured drop and agreement against the bounds;
    "confident-pass" the drop's CI upper end and the agreement's CI lower end (pass
    only on evidence); "confident-fail" the drop's CI lower end and the agreement's CI
    upper end (fail only on evidence).
    """

    max_drop: float = 1.0  # percentage points of top-1
    min_agreement: float = 0.99  # fraction of images with the reference's top-1 class
    gate: str = "point"

    def __post_init__(self) -> None:
        check_fields(max_drop=self.max_drop, min_agreement=self.min_agreement)
        if self.gate not in GATES:
            raise ParameterError("gate", f"must be one of {', '.join(GATES)}, got {self.gate!r}")


#: Classes of the highest logits a worker sends back per image (top-1 and top-5 need no
#: more; full logits would grow with N x classes).
TOP_K = 5


def topk_accuracy_ranked(ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of images whose label is among their first `k` ranked classes."""
    if len(labels) == 0:
        return 0.0
    return float((ranked[:, :k] == labels[:, None]).any(axis=1).mean())


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of images whose label is among the `k` highest logits."""
    if len(labels) == 0:
        return 0.0
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Top-1 accuracy of each class (NaN for a class absent from the split)."""
    correct = np.bincount(labels, weights=(pred == labels), minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / counts


def worst_classes(ref_pred: np.ndarray, cand_pred: np.ndarray, labels: np.ndarray,
                  class_names: tuple[str, ...], top: int = 3,
                  min_images: int = MIN_CLASS_IMAGES) -> list[dict]:
    """The classes whose accuracy dropped most (only those that dropped), among the
    classes with at least `min_images` images in the split; each with its image count."""
    k = len(class_names)
    ref, cand = per_class_accuracy(ref_pred, labels, k), per_class_accuracy(cand_pred, labels, k)
    counts = np.bincount(labels, minlength=k)
    drop = np.nan_to_num((ref - cand) * 100.0, nan=0.0)
    drop[counts < min_images] = 0.0
    order = [int(i) for i in np.argsort(-drop, kind="stable")[:top] if drop[i] > 0]
    return [{"class": class_names[i], "reference": float(ref[i]), "candidate": float(cand[i]),
             "drop": float(drop[i]), "images": int(counts[i])} for i in order]


@dataclass(frozen=True)
class PairedComparison:
    """A candidate against the reference on the same images.

    `drop` and `drop_ci` in percentage points (reference top-1 minus candidate top-1;
    Tango's paired score interval), `agreement` and `agreement_ci` as fractions (Wilson),
    and the discordant pairs they rest on.
    """

    drop: float
    drop_ci: tuple[float, float]
    agreement: float
    agreement_ci: tuple[float, float]
    reference_only_correct: int
    candidate_only_correct: int

    @property
    def discordant(self) -> dict[str, int]:
        return {"reference_only_correct": self.reference_only_correct,
                "candidate_only_correct": self.candidate_only_correct}


def paired_comparison(ref_pred: np.ndarray, cand_pred: np.ndarray,
                      labels: np.ndarray) -> PairedComparison:
    """Drop and agreement of a candidate on the same images (N,) of predicted classes,
    with their 95% intervals (`stats.paired_difference_interval`, `stats.wilson_interval`)."""
    n = len(labels)
    ref_ok, cand_ok = ref_pred == labels, cand_pred == labels
    only_ref, only_cand = int((ref_ok & ~cand_ok).sum()), int((cand_ok & ~ref_ok).sum())
    agree = int((ref_pred == cand_pred).sum())
    lo, hi = paired_difference_interval(only_ref, only_cand, n)
    return PairedComparison(drop=(only_ref - only_cand) / n * 100.0,
                            drop_ci=(lo * 100.0, hi * 100.0), agreement=agree / n,
                            agreement_ci=tuple(wilson_interval(agree, n)),
                            reference_only_correct=only_ref, candidate_only_correct=only_cand)


def decide(comparison: PairedComparison, bounds: Bounds, num_images: int) -> dict:
    """Whether the sample decides each bound: "within", "outside" or "undecided" (the
    95% interval straddles the bound), with about how many images would decide it."""
    lo, hi = comparison.drop_ci
    a_lo, a_hi = comparison.agreement_ci
    drop = ("within" if hi <= bounds.max_drop else "outside" if lo > bounds.max_drop
            else "undecided")
    agreement = ("within" if a_lo >= bounds.min_agreement else
                 "outside" if a_hi < bounds.min_agreement else "undecided")
    return {
        "max_drop": drop, "min_agreement": agreement,
        "images_to_decide": {
            "max_drop": images_to_decide(num_images, comparison.drop, (lo, hi),
                                         bounds.max_drop),
            "min_agreement": images_to_decide(num_images, comparison.agreement,
                                              (a_lo, a_hi), bounds.min_agreement)},
    }


@dataclass(frozen=True)
class AccuracyResult:
    """Top-1 (and top-5 with more than 5 classes, else None) of one artifact, as
    fractions; `precision` from its embedded edgecnn record (None without one);
    `sha256` set by the CLI."""

    artifact: str
    name: str
    backend: str
    precision: str | None
    accuracy: float
    top5: float | None
    sha256: str | None = None

    @property
    def format(self) -> str:
        """"onnx", "tflite", ... : the artifact's suffix."""
        return Path(self.artifact).suffix.lstrip(".")

    def to_dict(self) -> dict[str, Any]:
        """`edgecnn validate --json`'s "reference"."""
        row = {"artifact": self.artifact, "name": self.name, "backend": self.backend,
               "precision": self.precision, "accuracy": self.accuracy, "top5": self.top5}
        return row | ({"sha256": self.sha256} if self.sha256 is not None else {})

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> AccuracyResult:
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class CandidateResult:
    """One validated candidate: its accuracy (as `AccuracyResult`), the comparison with
    the reference, the top-5 drop (percentage points, None without top-5), the classes
    that lost most (`worst_classes`), whether the sample decides each bound (`decide`),
    notes on undecided bounds and one line per bound it misses (`judge`)."""

    artifact: str
    name: str
    backend: str
    precision: str | None
    accuracy: float
    top5: float | None
    comparison: PairedComparison
    top5_drop: float | None
    worst_classes: tuple[dict, ...]
    decided: dict
    notes: tuple[str, ...]
    failures: tuple[str, ...]
    sha256: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def format(self) -> str:
        """"onnx", "tflite", ... : the artifact's suffix."""
        return Path(self.artifact).suffix.lstrip(".")

    @property
    def drop(self) -> float:
        return self.comparison.drop

    @property
    def drop_ci(self) -> tuple[float, float]:
        return self.comparison.drop_ci

    @property
    def agreement(self) -> float:
        return self.comparison.agreement

    @property
    def agreement_ci(self) -> tuple[float, float]:
        return self.comparison.agreement_ci

    def to_dict(self) -> dict[str, Any]:
        """One entry of `edgecnn validate --json`'s "candidates" (keys in this order)."""
        c = self.comparison
        row = {"artifact": self.artifact, "name": self.name, "backend": self.backend,
               "precision": self.precision, "accuracy": self.accuracy, "top5": self.top5,
               "drop": c.drop, "drop_ci": list(c.drop_ci), "agreement": c.agreement,
               "agreement_ci": list(c.agreement_ci), "discordant": c.discordant,
               "top5_drop": self.top5_drop, "worst_classes": list(self.worst_classes),
               "decided": self.decided, "notes": list(self.notes),
               "failures": list(self.failures), "passed": self.passed}
        return row | ({"sha256": self.sha256} if self.sha256 is not None else {})

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> CandidateResult:
        """The inverse of `to_dict` (a device's `validate --json` entry)."""
        comparison = PairedComparison(
            drop=row["drop"], drop_ci=tuple(row["drop_ci"]), agreement=row["agreement"],
            agreement_ci=tuple(row["agreement_ci"]), **row["discordant"])
        return cls(artifact=row["artifact"], name=row["name"], backend=row["backend"],
                   precision=row["precision"], accuracy=row["accuracy"], top5=row["top5"],
                   comparison=comparison, top5_drop=row["top5_drop"],
                   worst_classes=tuple(row["worst_classes"]), decided=row["decided"],
                   notes=tuple(row["notes"]), failures=tuple(row["failures"]),
                   sha256=row.get("sha256"))


@dataclass(frozen=True)
class ValidationReport:
    """What `run_validate` measured on `data`'s validation split: the reference, the
    candidates, the bounds and the chance level (the majority class's share); `device`
    is the `--remote` setup (None on this machine)."""

    data: str
    num_images: int
    num_classes: int
    chance: float
    bounds: Bounds
    reference: AccuracyResult
    candidates: tuple[CandidateResult, ...]
    confidence: float = CONFIDENCE
    min_class_images: int = MIN_CLASS_IMAGES
    device: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        """`edgecnn validate --json`."""
        b = self.bounds
        report = {
            "data": self.data, "num_images": self.num_images, "num_classes": self.num_classes,
            "chance": self.chance,
            "bounds": {"max_drop": b.max_drop, "min_agreement": b.min_agreement,
                       "gate": b.gate},
            "confidence": self.confidence, "min_class_images": self.min_class_images,
            "reference": self.reference.to_dict(),
            "reference_accuracy": self.reference.accuracy,
            "reference_top5": self.reference.top5,
            "candidates": [c.to_dict() for c in self.candidates], "passed": self.passed,
        }
        return report | ({"device": self.device} if self.device is not None else {})

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> ValidationReport:
        """The inverse of `to_dict` (a device's `validate --json`)."""
        return cls(data=report["data"], num_images=report["num_images"],
                   num_classes=report["num_classes"], chance=report["chance"],
                   bounds=Bounds(**report["bounds"]),
                   reference=AccuracyResult.from_dict(report["reference"]),
                   candidates=tuple(CandidateResult.from_dict(c)
                                    for c in report["candidates"]),
                   confidence=report["confidence"],
                   min_class_images=report["min_class_images"], device=report.get("device"))


class _Artifact:
    """An artifact opened in its own worker process (see `predict_worker`)."""

    def __init__(self, path: Path, backend: str, threads: int | None) -> None:
        self.path = Path(path)
        self.worker = PredictWorker(self.path, backend, threads)
        self.backend = backend
        self.metadata: ArtifactMetadata | None = None
        self.num_classes: int | None = None

    def ready(self) -> None:
        info = self.worker.ready()
        self.backend, self.num_classes = info["backend"], info["num_classes"]
        if info["metadata"]:
            self.metadata = parse_metadata(info["metadata"], str(self.path))


def _ranked(artifact: _Artifact, images: Path, num_classes: int, data: str,
            batch_size: int) -> np.ndarray:
    """(N, min(5, K)) int32: each image's classes of the highest logits, best first."""
    record = require_record(artifact.path, artifact.metadata).preprocessing
    outputs = artifact.num_classes
    if outputs is not None and outputs != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but {artifact.path} outputs "
                           f"{outputs} logits; is this the dataset the model was trained on?")
    if record.num_classes != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but the metadata of "
                           f"{artifact.path} names {record.num_classes}")
    ranked = artifact.worker.predict(images, batch_size, top=TOP_K)
    answer = artifact.worker.answer
    if answer.get("outputs") != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but {artifact.path} outputs "
                           f"{answer.get('outputs')} logits per image")
    if not answer.get("finite", True):
        raise EdgecnnError(f"{artifact.path}: the model outputs NaN or infinite logits "
                           f"on {data}")
    return ranked


def _summary(artifact: _Artifact, ranked: np.ndarray, labels: np.ndarray,
             num_classes: int) -> AccuracyResult:
    metadata = artifact.metadata
    return AccuracyResult(
        artifact=str(artifact.path), name=artifact.path.name, backend=artifact.backend,
        precision=metadata.precision if metadata else None,
        accuracy=topk_accuracy_ranked(ranked, labels, 1),
        top5=topk_accuracy_ranked(ranked, labels, 5) if num_classes > 5 else None)


#: For each gate: (which drop figure, which agreement figure) is held against the bounds.
_GATE_FIGURES = {"point": ("drop", "agreement"),
                 "confident-pass": ("drop_ci_high", "agreement_ci_low"),
                 "confident-fail": ("drop_ci_low", "agreement_ci_high")}
_FIGURE_NAMES = {"drop_ci_high": "upper", "drop_ci_low": "lower",
                 "agreement_ci_low": "lower", "agreement_ci_high": "upper"}


def _figure(comparison: PairedComparison, name: str) -> float:
    if name in ("drop", "agreement"):
        return getattr(comparison, name)
    kind, _, end = name.rpartition("_ci_")
    return getattr(comparison, f"{kind}_ci")[0 if end == "low" else 1]


def judge(name: str, comparison: PairedComparison, bounds: Bounds) -> list[str]:
    """One message per bound the candidate `name` misses under `bounds.gate`, naming the
    bound, the figure held against it and by how much it misses."""
    drop_name, agreement_name = _GATE_FIGURES[bounds.gate]
    drop, agreement = _figure(comparison, drop_name), _figure(comparison, agreement_name)
    pct = int(round(CONFIDENCE * 100))
    failures = []
    if drop > bounds.max_drop:
        held = "" if drop_name == "drop" else (
            f" (its {pct}% CI {_FIGURE_NAMES[drop_name]} end {drop:.2f} pp, --gate "
            f"{bounds.gate})")
        failures.append(f"{name}: top-1 drop {comparison.drop:.2f} pp{held} "
                        f"exceeds --max-drop {bounds.max_drop:.2f} pp by "
                        f"{drop - bounds.max_drop:.2f} pp")
    if agreement < bounds.min_agreement:
        held = "" if agreement_name == "agreement" else (
            f" (its {pct}% CI {_FIGURE_NAMES[agreement_name]} end {agreement:.4f}, --gate "
            f"{bounds.gate})")
        failures.append(f"{name}: top-1 agreement {comparison.agreement:.4f}"
                        f"{held} is below --min-agreement {bounds.min_agreement:.4f} by "
                        f"{bounds.min_agreement - agreement:.4f}")
    return failures


def undecided_notes(name: str, comparison: PairedComparison, decided: dict, bounds: Bounds,
                    num_images: int) -> list[str]:
    """One line per bound whose 95% interval straddles it (`decide`): the sample cannot
    decide it."""
    notes = []
    for bound, flag, figure, interval, fmt in (
            ("max_drop", "--max-drop", comparison.drop, comparison.drop_ci, "+.2f"),
            ("min_agreement", "--min-agreement", comparison.agreement,
             comparison.agreement_ci, ".4f")):
        if decided[bound] != "undecided":
            continue
        need = decided["images_to_decide"][bound]
        more = (f"; about {need:,} images would" if need is not None else "")
        unit = " pp" if bound == "max_drop" else ""
        notes.append(f"{name}: {num_images:,} images cannot decide {flag} "
                     f"{getattr(bounds, bound):g}: {figure:{fmt}}{unit}, "
                     f"{int(round(CONFIDENCE * 100))}% CI [{interval[0]:{fmt}}, "
                     f"{interval[1]:{fmt}}]{unit}{more}")
    return notes


def run_validate(reference: Path, candidates: list[Path], data: str, bounds: Bounds, *,
                 backend: str = "auto", threads: int | None = None, seed: int = 0,
                 batch_size: int = 64) -> ValidationReport:
    """Evaluate the reference and every candidate on `data`'s validation split;
    `ValidationReport.to_dict()` is `edgecnn validate --json`."""
    from edgecnn.data import load

    if not candidates:
        raise ParameterError("candidates", "is empty: validate needs at least one",
                             flag="--candidate")
    if batch_size < 1:
        raise ParameterError("batch_size", f"must be at least 1, got {batch_size}", flag="--batch")
    dataset = load(data, seed=seed)  # bad data fails before any runtime starts
    images, labels = dataset.val_images, dataset.val_labels
    if len(labels) == 0:
        raise EdgecnnError(f"{data}: the validation split is empty")
    artifacts = [_Artifact(p, backend, threads) for p in [reference, *candidates]]
    try:
        for artifact in artifacts:  # fail early, before any inference, on a missing record
            artifact.ready()
            require_record(artifact.path, artifact.metadata)
        with tempfile.TemporaryDirectory(prefix="edgecnn-validate-") as tmp:
            report = _compare(artifacts, _hand_over(images, Path(tmp)), labels, dataset, data,
                              bounds, batch_size)
    finally:
        for artifact in artifacts:
            artifact.worker.close()
    return report


def _hand_over(images, directory: Path) -> Path:
    """The images as the workers read them: a .json list of the files (decoded there, a
    batch at a time) or an .npy they memory-map."""
    from edgecnn.data.files import ImageFiles

    if isinstance(images, ImageFiles):
        path = directory / "images.json"
        path.write_text(json.dumps({"paths": [str(p) for p in images.paths],
                                    "mode": images.mode}), encoding="utf-8")
        return path
    path = directory / "images.npy"
    np.save(path, np.ascontiguousarray(images))
    return path


def _compare(artifacts: list[_Artifact], images: Path, labels: np.ndarray, dataset,
             data: str, bounds: Bounds, batch_size: int) -> ValidationReport:
    k = dataset.num_classes
    ref_ranked = _ranked(artifacts[0], images, k, data, batch_size)
    ref_pred = ref_ranked[:, 0]
    ref = _summary(artifacts[0], ref_ranked, labels, k)
    results = []
    for artifact in artifacts[1:]:
        ranked = _ranked(artifact, images, k, data, batch_size)
        pred = ranked[:, 0]
        row = _summary(artifact, ranked, labels, k)
        comparison = paired_comparison(ref_pred, pred, labels)
        decided = decide(comparison, bounds, len(labels))
        results.append(CandidateResult(
            artifact=row.artifact, name=row.name, backend=row.backend,
            precision=row.precision, accuracy=row.accuracy, top5=row.top5,
            comparison=comparison,
            top5_drop=None if row.top5 is None else (ref.top5 - row.top5) * 100.0,
            worst_classes=tuple(worst_classes(ref_pred, pred, labels, dataset.class_names)),
            decided=decided,
            notes=tuple(undecided_notes(row.name, comparison, decided, bounds, len(labels))),
            failures=tuple(judge(row.name, comparison, bounds))))
    counts = np.bincount(labels, minlength=k)
    return ValidationReport(data=data, num_images=int(len(labels)), num_classes=k,
                            chance=float(counts.max() / len(labels)), bounds=bounds,
                            reference=ref, candidates=tuple(results))


def append_step_summary(markdown: str) -> Path | None:
    """Append to $GITHUB_STEP_SUMMARY when a GitHub Actions job sets it."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown + "\n")
    except OSError as exc:
        raise EdgecnnError(f"GITHUB_STEP_SUMMARY={target}: cannot append ({exc.strerror})") \
            from None
    return Path(target)
