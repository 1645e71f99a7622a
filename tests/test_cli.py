import json
import subprocess
import sys

import pytest

from edgecnn import __version__


def edgecnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_help_and_version():
    result = edgecnn("--help")
    assert result.returncode == 0
    for command in ("models", "train"):
        assert command in result.stdout
    assert edgecnn("--version").stdout.strip() == f"edgecnn {__version__}"


def test_models_json_lists_params_and_macs():
    result = edgecnn("models", "--input-size", "32", "--num-classes", "10", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) >= {"dsc_net", "mobilenet_v1", "mobilenet_v2", "efficientnet_b0",
                         "efficientnet_lite0"}
    assert rows["mobilenet_v2"]["params"] == 2_236_682
    assert 80e6 < rows["mobilenet_v2"]["macs"] < 95e6


def test_train_is_deterministic_and_writes_its_files(tmp_path):
    runs = []
    for name in ("a", "b"):
        result = edgecnn("train", "dsc_net", "--data", "digits", "--epochs", "1", "--seed", "3",
                         "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        assert "val_accuracy" in result.stdout
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
        assert (tmp_path / name / "checkpoint.pt").is_file()
        assert (tmp_path / name / "config.json").is_file()
    assert 0.0 <= runs[0]["val_accuracy"] <= 1.0
    assert runs[0]["val_accuracy"] == runs[1]["val_accuracy"]
    assert runs[0]["history"] == runs[1]["history"]


@pytest.mark.parametrize("args,message", [
    (["train", "resnet50"], "unknown model 'resnet50'; known: dsc_net"),
    (["train", "dsc_net", "--data", "mnist:/no/such/dir"], "directory not found: /no/such/dir"),
    (["train", "dsc_net", "--data", "npz:/no/such.npz"], "file not found: /no/such.npz"),
    (["train", "dsc_net", "--optimizer", "lion"], "unknown optimizer 'lion'"),
    # a flag of the other method is an error, not silently dropped
    (["export", "--int8", "dsc_net", "--ptq", "--qat-epochs", "2"],
     "--qat-epochs does not apply to PTQ (QAT only)"),
    (["quantize", "dsc_net", "--checkpoint", "ck", "--out", "q", "--method", "ptq", "--epochs",
      "2", "--lr", "1e-4"], "--epochs and --lr do not apply to PTQ (QAT only)"),
    (["quantize", "dsc_net", "--checkpoint", "ck", "--out", "q", "--calib-batches", "8"],
     "--calib-batches does not apply to QAT (PTQ only)"),
    (["quantize", "dsc_net", "--checkpoint", "ck", "--out", "q", "--epochs", "0"],
     "--epochs must be at least 1 with --method qat, got 0"),
    (["quantize", "dsc_net", "--checkpoint", "ck", "--out", "q", "--method", "ptq",
      "--observer", "kl"], "--observer must be one of minmax, moving_average, histogram"),
    (["convert", "/"], "ONNX model / is a directory, not a file"),
    # int8-only flags on the fp32 export are an error, not silently ignored
    (["export", "dsc_net", "--checkpoint", "ck", "--io", "uint8", "--onnx-activations",
      "int8"], "--io and --onnx-activations set the int8 artifacts (--int8, or --quantized"),
])
def test_errors_are_one_line_and_exit_2(args, message):
    result = edgecnn(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_defaults_are_the_config_defaults():
    """The CLI spells its defaults out (it must import without torch); they must not drift
    from the Python API's: `train` from TrainConfig, `quantize` from the QAT and PTQ
    recipes (its method-specific flags default to None and show the recipe's value)."""
    import inspect

    pytest.importorskip("torch")
    import typer

    from edgecnn.cli import app, quantize_command, train_command
    from edgecnn.quant.recipe import PTQ, QAT
    from edgecnn.train import TrainConfig

    train = {name: p.default for name, p in inspect.signature(train_command).parameters.items()}
    for name in ("epochs", "batch_size", "lr", "optimizer", "label_smoothing", "seed",
                 "freeze_epochs", "backbone_lr_factor"):
        assert train[name] == getattr(TrainConfig(), name), name
    quantize = {name: p.default for name, p in
                inspect.signature(quantize_command).parameters.items()}
    assert quantize["batch_size"] == QAT().train.batch_size == PTQ().batch_size
    shown = {p.name: p.show_default for p in
             typer.main.get_command(app).commands["quantize"].params}
    for name in ("epochs", "lr"):
        assert quantize[name] is None and float(shown[name]) == getattr(QAT().train, name)
    assert quantize["calib_batches"] is None and int(shown["calib_batches"]) == PTQ().calib_batches


def test_the_export_summary_fits_an_80_column_terminal():
    from rich.console import Console

    from edgecnn.report import SUMMARY_HEADERS, ArtifactReport, Report
    from edgecnn.runtime.tables import rich_table

    artifacts = [ArtifactReport(name=name, path=f"out/{name}", format=name.split(".")[1],
                                precision=precision, size_bytes=8_904_000, accuracy=0.9833,
                                drop=0.0, agreement=1.0, latency_ms_p50={1: 12.989, 2: 10.578},
                                speedup_vs_fp32=2.37, passed=True)
                 for name, precision in (("model_fp32.onnx", "fp32"),
                                         ("model_int8.tflite", "int8"))]
    report = Report({"artifacts": [a.to_dict() for a in artifacts]})
    console = Console(width=80, record=True)
    console.print(rich_table("t", SUMMARY_HEADERS, report.summary_rows()))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert "…" not in text
    for cell in report.summary_rows()[1]:
        assert cell in text


@pytest.mark.parametrize("verbose", [False, True])
def test_torch_commands_are_quiet_unless_verbose(verbose, tmp_path):
    """torchao's import noise (CUDA kernels it cannot load, a pytree deprecation) is hidden:
    an error is the one line on stderr; --verbose shows the noise again."""
    args = ["--verbose"] if verbose else []
    result = edgecnn(*args, "quantize", "dsc_net", "--checkpoint", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "q"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: checkpoint directory not found")
    assert (len(lines) > 1) == verbose, result.stderr
