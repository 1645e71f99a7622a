"""The accuracy gate on real digits: metrics, bounds, failures, summary output."""

import numpy as np
import pytest
from tiny_models import digits_classifier, write_onnx

from edgecnn.errors import EdgecnnError
from edgecnn.runtime.tables import to_markdown
from edgecnn.runtime.validate import (
    Bounds,
    append_step_summary,
    per_class_accuracy,
    run_validate,
    topk_accuracy,
    worst_classes,
)


def test_topk_and_per_class_accuracy():
    logits = np.array([[3, 2, 1, 0], [0, 1, 3, 2], [1, 0, 0, 2]], np.float32)
    labels = np.array([0, 3, 1])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 4) == 1.0
    acc = per_class_accuracy(np.array([0, 2, 3]), labels, 4)
    assert acc[0] == 1.0 and acc[1] == 0.0 and np.isnan(acc[2]) and acc[3] == 0.0


def test_worst_classes_lists_only_classes_that_dropped():
    labels = np.array([0, 0, 1, 1, 2, 2])
    ref = np.array([0, 0, 1, 1, 2, 0])
    cand = np.array([0, 1, 0, 0, 2, 2])
    worst = worst_classes(ref, cand, labels, ("a", "b", "c"), min_images=2)
    assert [(w["class"], w["drop"], w["images"]) for w in worst] == [("b", 100.0, 2),
                                                                     ("a", 50.0, 2)]
    # the default rule: a class needs MIN_CLASS_IMAGES (20) images for a line of its own
    assert worst_classes(ref, cand, labels, ("a", "b", "c")) == []
    many = np.repeat(labels, 10)  # 20 images per class: listed
    worst = worst_classes(np.repeat(ref, 10), np.repeat(cand, 10), many, ("a", "b", "c"))
    assert [(w["class"], w["images"]) for w in worst] == [("b", 20), ("a", 20)]


def test_int8_tflite_candidate_passes_against_the_onnx_reference(tiny_artifacts, digits_npz):
    report = run_validate(tiny_artifacts["fp32.onnx"],
                          [tiny_artifacts["int8.tflite"], tiny_artifacts["fp32.tflite"]],
                          f"npz:{digits_npz}", Bounds(max_drop=1.0, min_agreement=0.97))
    model = digits_classifier()
    from edgecnn.data import load

    data = load(f"npz:{digits_npz}")
    expected = (model.logits(data.val_images).argmax(1) == data.val_labels).mean()
    assert report.reference.accuracy == pytest.approx(expected)
    assert report.num_images == 359 and report.num_classes == 10
    assert 0.95 < report.reference.top5 <= 1.0
    int8, fp32 = report.candidates
    assert fp32.accuracy == report.reference.accuracy and fp32.drop == 0.0
    assert fp32.agreement == 1.0 and fp32.passed and fp32.worst_classes == ()
    assert abs(int8.drop) <= 1.0 and int8.agreement >= 0.97 and int8.passed
    assert int8.precision == "int8" and int8.backend == "ai_edge_litert"
    assert report.passed is True


def test_worse_candidate_fails_naming_bound_and_margin(tiny_artifacts, digits_npz):
    report = run_validate(tiny_artifacts["fp32.onnx"], [tiny_artifacts["worse.onnx"]],
                          f"npz:{digits_npz}", Bounds(max_drop=1.0, min_agreement=0.99))
    worse = report.candidates[0]
    assert worse.drop > 1.0 and worse.agreement < 0.99 and not worse.passed
    assert report.passed is False
    drop_msg, agreement_msg = worse.failures
    assert drop_msg == (f"worse.onnx: top-1 drop {worse.drop:.2f} pp exceeds --max-drop "
                        f"1.00 pp by {worse.drop - 1.0:.2f} pp")
    assert agreement_msg.startswith(f"worse.onnx: top-1 agreement {worse.agreement:.4f} is "
                                    "below --min-agreement 0.9900 by ")
    assert worse.worst_classes and worse.worst_classes[0]["drop"] > 0
    markdown = to_markdown(report)
    assert "| worse.onnx | onnxruntime | fp32 |" in markdown and "| FAIL |" in markdown
    assert "**FAIL** worse.onnx: top-1 drop" in markdown
    assert "classes that lost most" in markdown


def test_dataset_with_another_class_count_is_refused(tiny_artifacts, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "five.npz"
    np.savez(path, x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8), y=np.arange(50) % 5)
    with pytest.raises(EdgecnnError, match=r"npz:.*five\.npz has 5 classes but .*fp32\.onnx "
                                           r"outputs 10 logits"):
        run_validate(tiny_artifacts["fp32.onnx"], [tiny_artifacts["int8.tflite"]],
                     f"npz:{path}", Bounds())


def test_candidate_without_metadata_is_refused_naming_it(tiny_artifacts, digits_npz, tmp_path):
    bare = write_onnx(digits_classifier(), tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(EdgecnnError, match=r"bare\.onnx: no edgecnn metadata"):
        run_validate(tiny_artifacts["fp32.onnx"], [bare], f"npz:{digits_npz}", Bounds())


def test_bounds_are_validated():
    """The library names its parameters; the CLI shows the flags (`for_cli`)."""
    with pytest.raises(EdgecnnError, match=r"^min_agreement must be a finite number in "
                                           r"\[0, 1\], got 99.0") as error:
        Bounds(min_agreement=99.0)
    assert error.value.for_cli().startswith("--min-agreement must be a finite number")
    with pytest.raises(EdgecnnError, match=r"^max_drop must be a finite number in \[0, 100\], "
                                           r"got -1"):
        Bounds(max_drop=-1)
    for bad in (float("nan"), "1", None):  # a string or None was a TypeError
        with pytest.raises(EdgecnnError, match=f"^max_drop must be a finite number in "
                                               f".*, got {bad!r}") as error:
            Bounds(max_drop=bad)
    assert error.value.for_cli().startswith("--max-drop must be a finite number")


def test_step_summary_is_appended(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert append_step_summary("| a |\n") == summary
    assert summary.read_text() == "earlier step\n| a |\n\n"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    assert append_step_summary("x") is None
