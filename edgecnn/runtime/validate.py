"""The accuracy gate: candidates against a reference on a validation split.

For CI: top-1 (and top-5 with more than 5 classes) of the reference and of
each candidate, the drop in percentage points, top-1 agreement with the
reference, and the classes that lost most. A candidate passes when its drop
is at most `max_drop` and its agreement at least `min_agreement`; the CLI
turns that into exit code 0 or 1 (2 is for usage and input errors).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecnn.config import ArtifactMetadata
from edgecnn.errors import EdgecnnError
from edgecnn.runtime.metadata import parse_metadata, require_record
from edgecnn.runtime.predict_worker import PredictWorker
from edgecnn.runtime.tables import VALIDATE_HEADERS, markdown_table, validate_rows


@dataclass(frozen=True)
class Bounds:
    """How much worse than the reference a candidate may be."""

    max_drop: float = 1.0  # percentage points of top-1
    min_agreement: float = 0.99  # fraction of images with the reference's top-1 class

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop) or not math.isfinite(self.min_agreement):
            raise EdgecnnError(f"--max-drop and --min-agreement must be finite numbers, got "
                               f"{self.max_drop} and {self.min_agreement}")
        if self.max_drop < 0:
            raise EdgecnnError(f"--max-drop must be >= 0 percentage points, got {self.max_drop}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise EdgecnnError(f"--min-agreement is a fraction in [0, 1], got "
                               f"{self.min_agreement}")


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
                  class_names: tuple[str, ...], top: int = 3) -> list[dict]:
    """The classes whose accuracy dropped most (only those that dropped)."""
    k = len(class_names)
    ref, cand = per_class_accuracy(ref_pred, labels, k), per_class_accuracy(cand_pred, labels, k)
    drop = np.nan_to_num((ref - cand) * 100.0, nan=0.0)
    order = [int(i) for i in np.argsort(-drop, kind="stable")[:top] if drop[i] > 0]
    return [{"class": class_names[i], "reference": float(ref[i]), "candidate": float(cand[i]),
             "drop": float(drop[i])} for i in order]


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


def _logits(artifact: _Artifact, images: Path, num_classes: int, data: str,
            batch_size: int) -> np.ndarray:
    record = require_record(artifact.path, artifact.metadata).preprocessing
    outputs = artifact.num_classes
    if outputs is not None and outputs != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but {artifact.path} outputs "
                           f"{outputs} logits; is this the dataset the model was trained on?")
    if record.num_classes != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but the metadata of "
                           f"{artifact.path} names {record.num_classes}")
    logits = artifact.worker.predict(images, batch_size)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise EdgecnnError(f"{data} has {num_classes} classes but {artifact.path} outputs "
                           f"logits shaped {logits.shape}")
    if not np.isfinite(logits).all():
        raise EdgecnnError(f"{artifact.path}: the model outputs NaN or infinite logits "
                           f"on {data}")
    return logits


def _summary(artifact: _Artifact, logits: np.ndarray, labels: np.ndarray) -> dict:
    metadata = artifact.metadata
    return {
        "artifact": str(artifact.path), "name": artifact.path.name,
        "backend": artifact.backend,
        "precision": metadata.precision if metadata else None,
        "accuracy": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5) if logits.shape[1] > 5 else None,
    }


def judge(candidate: dict, bounds: Bounds) -> list[str]:
    """One message per bound the candidate misses, naming it and by how much."""
    failures = []
    if candidate["drop"] > bounds.max_drop:
        failures.append(f"{candidate['name']}: top-1 drop {candidate['drop']:.2f} pp exceeds "
                        f"--max-drop {bounds.max_drop:.2f} pp by "
                        f"{candidate['drop'] - bounds.max_drop:.2f} pp")
    if candidate["agreement"] < bounds.min_agreement:
        failures.append(f"{candidate['name']}: top-1 agreement {candidate['agreement']:.4f} "
                        f"is below --min-agreement {bounds.min_agreement:.4f} by "
                        f"{bounds.min_agreement - candidate['agreement']:.4f}")
    return failures


def run_validate(reference: Path, candidates: list[Path], data: str, bounds: Bounds, *,
                 backend: str = "auto", threads: int | None = None, seed: int = 0,
                 batch_size: int = 64) -> dict:
    """Evaluate the reference and every candidate on `data`'s validation split."""
    from edgecnn.data import load

    if not candidates:
        raise EdgecnnError("validate needs at least one --candidate")
    if batch_size < 1:
        raise EdgecnnError(f"batch_size must be at least 1, got {batch_size}")
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
            images_npy = Path(tmp) / "images.npy"
            np.save(images_npy, np.ascontiguousarray(images))
            report = _compare(artifacts, images_npy, labels, dataset, data, bounds, batch_size)
    finally:
        for artifact in artifacts:
            artifact.worker.close()
    return report


def _compare(artifacts: list[_Artifact], images: Path, labels: np.ndarray, dataset,
             data: str, bounds: Bounds, batch_size: int) -> dict:
    k = dataset.num_classes
    ref_logits = _logits(artifacts[0], images, k, data, batch_size)
    ref_pred = ref_logits.argmax(1)
    ref = _summary(artifacts[0], ref_logits, labels)
    results = []
    for artifact in artifacts[1:]:
        logits = _logits(artifact, images, k, data, batch_size)
        pred = logits.argmax(1)
        row = _summary(artifact, logits, labels)
        row.update(
            drop=(ref["accuracy"] - row["accuracy"]) * 100.0,
            top5_drop=None if row["top5"] is None else (ref["top5"] - row["top5"]) * 100.0,
            agreement=float((pred == ref_pred).mean()),
            worst_classes=worst_classes(ref_pred, pred, labels, dataset.class_names),
        )
        row["failures"] = judge(row, bounds)
        row["passed"] = not row["failures"]
        results.append(row)
    counts = np.bincount(labels, minlength=k)
    return {
        "data": data, "num_images": int(len(labels)), "num_classes": k,
        "chance": float(counts.max() / len(labels)),
        "bounds": {"max_drop": bounds.max_drop, "min_agreement": bounds.min_agreement},
        "reference": ref, "reference_accuracy": ref["accuracy"], "reference_top5": ref["top5"],
        "candidates": results, "passed": all(c["passed"] for c in results),
    }


def to_markdown(report: dict) -> str:
    """The table, the bounds and the classes that lost most, as GitHub markdown."""
    b = report["bounds"]
    lines = [f"### edgecnn validate: {report['data']} ({report['num_images']} images, "
             f"{report['num_classes']} classes)", "",
             markdown_table(VALIDATE_HEADERS, validate_rows(report)),
             f"Bounds: top-1 drop ≤ {b['max_drop']:.2f} pp, agreement ≥ "
             f"{b['min_agreement'] * 100:.2f}%.", ""]
    for c in report["candidates"]:
        if c["worst_classes"]:
            worst = ", ".join(f"{w['class']} (−{w['drop']:.1f} pp)" for w in c["worst_classes"])
            lines.append(f"- {c['name']}: classes that lost most: {worst}")
        for failure in c["failures"]:
            lines.append(f"- **FAIL** {failure}")
    return "\n".join(lines).rstrip() + "\n"


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
