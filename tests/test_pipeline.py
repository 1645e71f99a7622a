"""`edgecnn export --int8`: the one command, end to end on digits with dsc_net."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from edgecnn import pipeline
from edgecnn.artifacts import ArtifactConfig
from edgecnn.cli import app
from edgecnn.errors import EdgecnnError
from edgecnn.quant.spec import QuantConfig
from edgecnn.reference import Training
from edgecnn.runtime import open_session
from edgecnn.runtime.validate import Bounds
from edgecnn.train import TrainConfig

ARTIFACTS = ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite")


def export_int8(*args):
    return subprocess.run([sys.executable, "-m", "edgecnn", "export", "--int8", "dsc_net", *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "COLUMNS": "160"})


@pytest.fixture(scope="module")
def trained_run(reference_checkpoint, tmp_path_factory):
    """The command on a trained dsc_net checkpoint, QAT for one epoch."""
    out = tmp_path_factory.mktemp("run")
    result = export_int8("--checkpoint", str(reference_checkpoint("dsc_net")), "--qat-epochs",
                         "1", "--out", str(out))
    return out, result


def test_every_artifact_exists_loads_and_is_reported(trained_run, digits):
    out, result = trained_run
    assert result.returncode == 0, result.stderr
    for name in (*ARTIFACTS, "report.json", "report.md", "latency_vs_accuracy.png",
                 "preprocessing.json", "quantized/model_int8.pt2"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "dsc_net" and report["data"] == "digits"
    assert report["method"] == "qat" and report["passed"] is True
    assert report["reference_accuracy"] >= 0.95
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert set(by_name) == set(ARTIFACTS)
    for name, entry in by_name.items():
        with open_session(out / name) as session:
            accuracy = float((session.predict(digits.val_images).argmax(1)
                              == digits.val_labels).mean())
        assert accuracy == pytest.approx(entry["accuracy"], abs=1e-9), name
        assert entry["size_bytes"] == (out / name).stat().st_size
        assert set(entry["latency_ms_p50"]) == {"1", str(os.cpu_count())}
        assert all(v > 0 for v in entry["latency_ms_p50"].values())
        assert entry["format"] == name.split(".")[-1]
        assert entry["precision"] == name.split("_")[1].split(".")[0]
        if entry["precision"] == "int8":
            assert entry["drop"] <= 1.0 and entry["agreement"] >= 0.97, entry
            assert entry["size_bytes"] < 0.5 * by_name[name.replace("int8", "fp32")]["size_bytes"]
    assert "model_int8.tflite" in result.stdout and "vs fp32" in result.stdout
    assert len(report["inspect"]["worst"]) == 5 and (out / "sqnr_along_depth.png").is_file()
    assert "## Where the int8 error comes from" in (out / "report.md").read_text()


def test_a_corrupted_int8_model_fails_the_gate_with_exit_1(reference_checkpoint, tmp_path,
                                                           monkeypatch):
    real_export = pipeline.export_artifacts

    def export_then_corrupt(*args, **kwargs):
        written = real_export(*args, **kwargs)
        int8 = [p for p in written if p.name == "model_int8.onnx"]
        if int8:  # flip the sign of every int8 weight of the first conv
            model = onnx.load(str(int8[0]))
            weight = next(i for i in model.graph.initializer
                          if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
            weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
            onnx.save(model, str(int8[0]))
        return written

    monkeypatch.setattr(pipeline, "export_artifacts", export_then_corrupt)
    result = CliRunner().invoke(app, ["export", "--int8", "dsc_net", "--checkpoint",
                                      str(reference_checkpoint("dsc_net")), "--ptq", "--formats",
                                      "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    broken = next(a for a in report["artifacts"] if a["name"] == "model_int8.onnx")
    assert broken["drop"] > 1.0 and not broken["passed"] and not report["passed"]


def test_rerun_reuses_the_trained_checkpoint_and_force_redoes_it(tmp_path):
    args = ("--epochs", "1", "--qat-epochs", "1", "--formats", "onnx", "--out", str(tmp_path))
    first = export_int8(*args)
    # one epoch leaves dsc_net at chance on digits: the gate says the reference is broken
    # (issue 16: it used to pass), and the stages are cached all the same
    assert first.returncode == 1, first.stderr
    assert "itself is broken" in first.stderr
    stages = json.loads((tmp_path / "report.json").read_text())["stages"]
    assert not stages["train"]["reused"] and not stages["quantize"]["reused"]
    weights = (tmp_path / "checkpoint" / "checkpoint.pt").read_bytes()

    second = export_int8(*args)
    assert second.returncode == 1, second.stderr
    stages = json.loads((tmp_path / "report.json").read_text())["stages"]
    assert stages["train"]["reused"] and stages["quantize"]["reused"] and stages["export"]["reused"]
    assert (tmp_path / "checkpoint" / "checkpoint.pt").read_bytes() == weights
    assert "(reused)" in second.stderr

    changed = export_int8("--epochs", "1", "--formats", "onnx", "--ptq", "--out", str(tmp_path))
    stages = json.loads((tmp_path / "report.json").read_text())["stages"]
    assert changed.returncode == 1 and stages["train"]["reused"]
    assert not stages["quantize"]["reused"]  # a different method is a different key


def test_python_api_mirrors_the_command(reference_checkpoint, tmp_path):
    import edgecnn
    from edgecnn.artifacts import ArtifactConfig
    from edgecnn.quant.recipe import PTQ
    from edgecnn.runtime.validate import Bounds

    report = edgecnn.export_int8("dsc_net", reference=reference_checkpoint("dsc_net"),
                                 recipe=PTQ(), artifacts=ArtifactConfig(formats=("tflite",)),
                                 bounds=Bounds(min_agreement=0.97), out=tmp_path,
                                 show_progress=False)
    assert report.passed and report.data["min_agreement"] == 0.97
    assert [a.name for a in report.artifacts] == ["model_fp32.tflite", "model_int8.tflite"]
    assert not (tmp_path / "model_int8.onnx").exists()
    int8 = report.artifact("model_int8.tflite")
    agreement = int8.agreement
    assert agreement >= 0.97 and (int8.format, int8.precision) == ("tflite", "int8")
    # the summary's drop and agreement come with their paired 95% intervals (issue 15)
    assert int8.drop_ci[0] <= int8.drop <= int8.drop_ci[1]
    assert int8.agreement_ci[0] <= agreement <= int8.agreement_ci[1] <= 1.0
    from edgecnn.report import interval_lines

    lines = interval_lines(report)
    assert lines[0].startswith(f"model_int8.tflite: drop {int8.drop:+.2f} pp [")
    assert lines[1] == f"(95% confidence intervals, {report.data['val_images']} validation " \
                       "images: more images narrow them)"
    assert lines[1] in (tmp_path / "report.md").read_text()
    # the bound is the caller's: the same files against the strictest one
    strict = edgecnn.export_int8("dsc_net", reference=reference_checkpoint("dsc_net"),
                                 recipe=PTQ(), artifacts=ArtifactConfig(formats=("tflite",)),
                                 bounds=Bounds(min_agreement=1.0), out=tmp_path,
                                 show_progress=False)
    assert strict.passed == (agreement == 1.0) and strict.data["min_agreement"] == 1.0
    assert strict.data["stages"]["export"]["reused"]
    assert np.isfinite(report.data["reference_accuracy"])


def test_bad_formats_and_missing_checkpoint_are_one_line_errors(tmp_path):
    result = export_int8("--formats", "coreml", "--out", str(tmp_path))
    assert result.returncode == 2 and "supported are onnx, tflite" in result.stderr
    result = export_int8("--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert result.returncode == 2 and "checkpoint directory not found" in result.stderr
    result = export_int8("--min-agreement", "1.5", "--out", str(tmp_path))
    assert result.returncode == 2 and "--min-agreement" in result.stderr
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = export_int8("--checkpoint", str(afile), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "is a file, not a checkpoint directory" in result.stderr
    # a training flag beside a trained checkpoint is refused, not ignored
    result = export_int8("--checkpoint", str(tmp_path), "--epochs", "2", "--input-size", "40",
                         "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--epochs, --input-size are for training a new one" \
        in result.stderr, result.stderr
    # --freeze-epochs is one of them (it said "needs --pretrained", which --checkpoint is not)
    result = export_int8("--checkpoint", str(tmp_path), "--freeze-epochs", "2",
                         "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--freeze-epochs is for training a new one, without " \
        "--checkpoint" in result.stderr and "needs --pretrained" not in result.stderr, \
        result.stderr


def test_stage_keys_change_with_the_edgecnn_version(monkeypatch):
    """Artifacts cached by another release are redone, not reused."""
    from edgecnn import pipeline

    key = pipeline.stage_key("mobilenet_v2", "digits", "qat", 3)
    assert pipeline.stage_key("mobilenet_v2", "digits", "qat", 3) == key
    monkeypatch.setattr(pipeline, "__version__", "99.0.0")
    assert pipeline.stage_key("mobilenet_v2", "digits", "qat", 3) != key


def _export_user_model(factory: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`edgecnn export --int8 user_models:FACTORY --data digits --out OUT FLAGS` in a child
    process with tests/ importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "edgecnn", "export", "--int8",
                           f"user_models:{factory}", "--data", "digits", "--out", str(out),
                           *flags], capture_output=True, text=True, env=env, timeout=600)


def test_unexportable_model_stops_before_training(tmp_path):
    """export --int8 checks the untrained model first: an op the converter cannot lower
    stops the run with the converter's one-line error, before any epoch or checkpoint."""
    out = tmp_path / "out"
    result = _export_user_model("cumulative_net", out, "--epochs", "3")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "checked before training" in lines[0]
    assert "CumSum" in lines[0]
    assert "epoch" not in result.stdout + result.stderr
    assert not (out / "checkpoint").exists()


def test_random_ops_qat_cannot_switch_off_stop_before_training(tmp_path):
    """export --int8 (QAT) of a model with stochastic depth: the dry run captures it in
    train mode, as QAT does, and stops before any epoch naming the node and the module
    (QAT once trained it, then shipped a random int8 ONNX and a .tflite with a frozen
    mask); the PTQ dry run (eval mode: no branch) passes."""
    from user_models import DropPathNet

    from edgecnn import preflight
    from edgecnn.config import Preprocessing

    out = tmp_path / "out"
    result = _export_user_model("DropPathNet", out, "--epochs", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "(checked before training): QAT captures the model in train " \
        "mode, where node 'bernoulli_' (drop_path) draws random numbers" in lines[0], lines
    assert "epoch" not in result.stdout + result.stderr
    assert not (out / "checkpoint").exists()
    record = Preprocessing((16, 16), 1, (0.0,), (1.0,), [str(i) for i in range(10)])
    preflight.check_exportable(DropPathNet(), record, formats=("onnx",))


def test_the_dry_run_loads_the_program_back_as_the_real_run(monkeypatch):
    """The check before training saves the quantized program and loads it through the
    checked load (`safe_pt2`), as the real run does after training: a model with shape
    arithmetic on the batch (MobileViT's unfold, `user_models.BatchFold`) passes, and a
    program the load refuses (here: that arithmetic no longer allowed) stops the check,
    naming the node, where it once stopped the run after training."""
    import re

    from user_models import BatchFold

    from edgecnn import preflight, safe_pt2
    from edgecnn.config import Preprocessing

    record = Preprocessing((16, 16), 1, (0.0,), (1.0,), [str(i) for i in range(10)])
    preflight.check_exportable(BatchFold(), record, formats=("onnx",))
    monkeypatch.setattr(safe_pt2, "ALLOWED_TARGETS",
                        re.compile(r"^torch\.ops\.(aten|quantized_decomposed)\.\w+\.\w+$"))
    with pytest.raises(EdgecnnError, match=r"checked before training\): \S+model_int8\.pt2: "
                                           r"node calls '_operator\.mul'"):
        preflight.check_exportable(BatchFold(), record, formats=("onnx",))


def test_a_factory_that_raises_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    for command in (["export", "--int8"], ["train"]):
        result = subprocess.run([sys.executable, "-m", "edgecnn", *command,
                                 "user_models:raising_net", "--data", "digits", "--out",
                                 str(tmp_path / "out")], capture_output=True, text=True,
                                env=env, timeout=600)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == ["error: factory 'user_models:raising_net' raised RuntimeError: boom "
                         "from the factory"], result.stderr


@pytest.mark.parametrize("make, expected", [
    (lambda: Training(width_mult=0), "width_mult must be a finite number in (0, 8], got 0"),
    (lambda: Training(input_size="32"), "input_size must be an integer in [8, 8192]"),
    (lambda: Training(input_size=4), "input_size must be an integer in [8, 8192]"),
    (lambda: ArtifactConfig(formats=()), "formats is empty"),
    (lambda: Bounds(max_drop="1"), "max_drop must be a finite number in [0, 100], got '1'"),
    (lambda: TrainConfig(epochs="3"), "epochs must be an integer in [0, 100000], got '3'"),
    (lambda: TrainConfig(epochs=2, freeze_epochs=3), "freeze_epochs must be at most epochs (2)"),
])
def test_typed_configs_check_themselves(make, expected):
    """A bad value fails when the config is built, before any stage (a width of 0 trained
    an epoch, then blamed the checkpoint it had written)."""
    with pytest.raises(EdgecnnError) as error:
        make()
    assert str(error.value).startswith(expected), error.value


def test_export_int8_checks_its_arguments_before_any_stage(tmp_path):
    import edgecnn

    with pytest.raises(EdgecnnError, match="^bench_runs must be a positive integer, got -5"):
        edgecnn.export_int8("dsc_net", bench_runs=-5, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert QuantConfig(int16="conv").int16 == ("conv",)  # one pattern, not four letters
