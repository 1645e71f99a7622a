"""Issue 16, kinds 2, 5, 6 and 8: bad data, records, flags and outputs are one line, before work.

Each case is the issue's reproduction through the real CLI (or the library call it makes),
and the outcome must be exit 2 with exactly one `error:` line naming what is at fault."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecnn.errors import EdgecnnError


def _cli(edgecnn_cmd, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*edgecnn_cmd, *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-2000:]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "\x1b[" not in result.stderr  # no color when stderr is not a terminal
    return lines[0]


# --- npz (kind 2) ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def val_arrays():
    from edgecnn.data import load

    ds = load("digits")
    return ds.val_images, ds.val_labels


def test_float_x_val_is_converted_like_x_not_cast_to_black(val_arrays, tmp_path):
    from edgecnn.data import load

    x, y = val_arrays
    path = tmp_path / "f.npz"
    np.savez(path, x=x[:0], y=y[:0], x_val=x.astype(np.float32) / 255.0, y_val=y)
    ds = load(f"npz:{path}")
    assert np.array_equal(ds.val_images, x)  # not all zeros: one conversion for both splits


@pytest.mark.parametrize("change, expected", [
    (lambda x, y: {"x_val": x > 128}, "x_val is bool"),
    (lambda x, y: {"y_val": y[:100]}, "359 images but 100 labels in y_val"),
    (lambda x, y: {"x_val": x.reshape(len(x), -1)[:1]}, "x_val: expected images shaped"),
    (lambda x, y: {"y_val": np.where(np.arange(len(y)) == 0, -1, y)}, "labels in [-1"),
    (lambda x, y: {"y_val": np.where(np.arange(len(y)) == 0, np.nan, y)}, "non-integer labels"),
    (lambda x, y: {"y_val": np.where(np.arange(len(y)) == 0, 2**40, y)}, "class indices must"),
    (lambda x, y: {"x_val": np.asarray([["a"] * 4] * len(y))}, "x_val"),
    (lambda x, y: {"x_val": np.zeros((len(y), 0, 0), np.uint8)}, "image shape"),
    (lambda x, y: {"class_names": np.asarray("x")}, "class_names must be a 1-D array"),
    (lambda x, y: {"x_val": x[:0], "y_val": y[:0]}, "no labels"),
    (lambda x, y: {"x_val": x.astype(np.float32)}, "float images must be finite and in [0, 1]"),
])
def test_bad_npz_is_one_line(val_arrays, tmp_path, edgecnn_cmd, robust_base, change, expected):
    x, y = val_arrays
    arrays = {"x": x[:0], "y": y[:0], "x_val": x, "y_val": y,
              "class_names": np.asarray([str(i) for i in range(10)])}
    arrays.update(change(x, y))
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = _cli(edgecnn_cmd, "validate", "--reference", str(robust_base / "model_fp32.onnx"),
                  "--candidate", str(robust_base / "model_int8.onnx"), "--data", f"npz:{path}")
    _one_error(result, expected)


# --- records (kind 5) -----------------------------------------------------------------------

def _record(robust_base: Path) -> dict:
    return json.loads((robust_base / "model_int8.tflite.json").read_text())


@pytest.mark.parametrize("make, expected", [
    (lambda r: b"\xff\xfe{}", "not UTF-8"),
    (lambda r: ("[" * 2000 + "]" * 2000).encode(), "nested too deeply"),
    (lambda r: b'"a string"', "must be a JSON object"),
    (lambda r: json.dumps({**r, "precision": 3}).encode(), "precision must be"),
    (lambda r: json.dumps({**r, "preprocessing": {**r["preprocessing"],
                                                  "input_size": [20000, 20000]}}).encode(),
     "input_size must be in 1..8192"),
    (lambda r: json.dumps({**r, "input_quant": {"scale": -1, "zero_point": 0}}).encode(),
     "input_quant.scale must be > 0"),
])
def test_bad_sidecar_records_are_one_line(robust_base, tmp_path, edgecnn_cmd, make, expected):
    import onnx

    bare = tmp_path / "bare.onnx"
    model = onnx.load(str(robust_base / "model_fp32.onnx"))
    del model.metadata_props[:]
    onnx.save(model, str(bare))
    Path(f"{bare}.json").write_bytes(make(_record(robust_base)))
    for args in (["bench", str(bare), "--runs", "1", "--warmup", "0"],
                 ["validate", "--reference", str(bare), "--candidate",
                  str(robust_base / "model_int8.tflite"), "--data",
                  f"npz:{robust_base / 'val.npz'}"]):
        _one_error(_cli(edgecnn_cmd, *args), "bare.onnx.json", expected)


@pytest.mark.parametrize("state, expected", [
    ("ints", "expected a state_dict of tensors"), ("strings", "expected a state_dict of tensors"),
    ("nested", "expected a state_dict of tensors"), ("nan", "NaN or infinite"),
    ("pickle", "not a tensors-only checkpoint"),
])
def test_bad_checkpoints_are_one_line(robust_base, tmp_path, edgecnn_cmd, state, expected):
    torch = pytest.importorskip("torch")
    from fuzz_artifacts import _code_pickle

    ckpt = Path(shutil.copytree(robust_base / "checkpoint", tmp_path / "ckpt"))
    weights = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    if state == "pickle":
        (ckpt / "checkpoint.pt").write_bytes(_code_pickle(str(tmp_path / "PWNED")))
    else:
        if state == "ints":
            weights = {k: 3 for k in weights}
        elif state == "strings":
            weights = {k: "x" for k in weights}
        elif state == "nested":
            weights = {"state": weights}
        else:
            key = next(k for k, v in weights.items() if v.is_floating_point())
            weights[key] = torch.full_like(weights[key], float("nan"))
        torch.save(weights, ckpt / "checkpoint.pt")
    result = _cli(edgecnn_cmd, "export", "--int8", "dsc_net", "--checkpoint", str(ckpt),
                  "--ptq", "--out", str(tmp_path / "out"))
    _one_error(result, "checkpoint.pt", expected)
    assert not (tmp_path / "PWNED").exists()


def test_nested_config_json_is_one_line(robust_base, tmp_path, edgecnn_cmd):
    ckpt = Path(shutil.copytree(robust_base / "checkpoint", tmp_path / "ckpt"))
    (ckpt / "config.json").write_text("[" * 3000 + "]" * 3000)
    _one_error(_cli(edgecnn_cmd, "export", "dsc_net", "--checkpoint", str(ckpt), "--out",
                    str(tmp_path / "o")), "config.json", "nested too deeply")


# --- flags and arguments, before any work (kinds 2 and 8) -----------------------------------

@pytest.mark.parametrize("args, expected", [
    (["validate", "--reference", "a.onnx", "--candidate", "b.onnx", "--data", "digits",
      "--max-drop", "nan"], "--max-drop must be a finite number"),
    (["export", "--int8", "dsc_net", "--max-drop", "inf"], "--max-drop"),
    (["train", "dsc_net", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "dsc_net", "--label-smoothing", "2"],
     "--label-smoothing must be a finite number in [0, 1)"),
    (["train", "dsc_net", "--width-mult", "nan"], "--width-mult"),
    (["bench", "a.onnx", "--seconds", "nan"], "--seconds"),
    (["bench", "a.onnx", "--threads", "100000"], "--threads"),
    (["train", "dsc_net", "--input-size", "0"], "--input-size must be an integer in [8, 8192]"),
    (["models", "--in-channels", "0"], "--in-channels must be an integer in [1, 3]"),
    (["train", "dsc_net", "--data", "digits:extra"], "'digits' takes no argument"),
    (["export", "", "--int8"], "model name is empty"),
    (["export", "os:system", "--int8"], "not a Python function"),
    (["export", "--int8", "dsc_net", "--io", "bogus"], "--io must be one of int8, uint8, float"),
    (["train", "dsc_net", "--mean", "0.5", "--std", "1e-30"], "--std values must be >= 0.001"),
    # click's own usage errors: one line too, never typer's boxed usage text
    (["inspect", "a.onnx", "b.onnx", "--images", "nan"],
     "edgecnn inspect: Invalid value for '--images'"),
    (["export", "--int8", "dsc_net", "--epochs", "1.5"], "Invalid value for '--epochs'"),
    (["export", "--int8"], "edgecnn export: Missing argument"),
    (["export", "--int8", "dsc_net", "--bogus"], "No such option: --bogus"),
    (["expor", "dsc_net"], "No such command 'expor'"),
])
def test_bad_arguments_fail_before_any_work(edgecnn_cmd, tmp_path, args, expected):
    result = subprocess.run([*edgecnn_cmd, *args], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    _one_error(result, expected)
    assert not (tmp_path / "artifacts").exists() or args[0] != "export"
    assert not (tmp_path / "checkpoints").exists()


def test_outputs_are_checked_before_work(edgecnn_cmd, tmp_path, robust_base):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_error(_cli(edgecnn_cmd, "train", "dsc_net", "--out", str(blocker / "sub")),
               "--out", "cannot write there")
    _one_error(_cli(edgecnn_cmd, "validate", "--reference",
                    str(robust_base / "model_fp32.onnx"), "--candidate",
                    str(robust_base / "model_int8.onnx"), "--data",
                    f"npz:{robust_base / 'val.npz'}", "--json", str(tmp_path)),
               "--json", "is a directory")


def test_an_early_error_leaves_no_output_folder(edgecnn_cmd, tmp_path):
    """The --out check writes a probe where the folder would go and creates nothing: a run
    refused by a later check (here the weights file) leaves no empty folder behind."""
    weights = tmp_path / "empty.pt"  # passes the flag checks, refused when read
    weights.write_bytes(b"")
    out = tmp_path / "new" / "deep"
    _one_error(_cli(edgecnn_cmd, "train", "dsc_net", "--pretrained", str(weights), "--out",
                    str(out)), "empty.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["empty.pt"]  # no folder, nor a probe


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    from edgecnn.util import atomic_write

    with pytest.raises(EdgecnnError, match=r"cannot write .*out\.json: No space left"):
        with atomic_write(tmp_path / "out.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# --- the manifest (kind 2) ------------------------------------------------------------------

def test_validate_and_bench_check_the_manifest(robust_base, tmp_path, edgecnn_cmd):
    report = robust_base.parent / "export" / "report.json"
    ok = _cli(edgecnn_cmd, "bench", str(report.parent / "model_int8.tflite"), "--runs", "1",
              "--warmup", "0", "--manifest", str(report))
    assert ok.returncode == 0, ok.stderr
    assert "sha256 " in ok.stdout and f"matches {report}" in ok.stdout
    damaged = Path(shutil.copy(report.parent / "model_int8.tflite", tmp_path))
    raw = bytearray(damaged.read_bytes())
    raw[-100] ^= 1
    damaged.write_bytes(raw)
    shutil.copy(report.parent / "model_int8.tflite.json", tmp_path)
    _one_error(_cli(edgecnn_cmd, "validate", "--reference",
                    str(report.parent / "model_fp32.onnx"), "--candidate", str(damaged),
                    "--data", f"npz:{robust_base / 'val.npz'}", "--manifest", str(report)),
               "model_int8.tflite", "is not the exported")


def test_a_broken_reference_fails_the_gate(robust_base, tmp_path, edgecnn_cmd):
    """A reference at chance (the classifier's rows rolled) is reported as broken, exit 1."""
    torch = pytest.importorskip("torch")
    ckpt = Path(shutil.copytree(robust_base / "checkpoint", tmp_path / "ckpt"))
    state = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    for key in [k for k in state if k.startswith("classifier")]:
        state[key] = torch.roll(state[key], 1, dims=0)
    torch.save(state, ckpt / "checkpoint.pt")
    result = _cli(edgecnn_cmd, "export", "--int8", "dsc_net", "--checkpoint", str(ckpt),
                  "--ptq", "--out", str(tmp_path / "out"), timeout=900)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "FAIL the fp32 reference model_fp32.onnx itself is broken" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not report["passed"] and report["manifest"]["model_int8.tflite"]["sha256"]


@pytest.mark.parametrize("perm, message", [
    # the ONNX checker lets a short perm through: the Transpose layout rule says why
    ([0, 2, 1], "node 'odd_perm' (Transpose): perm [0, 2, 1] has 3 axes, its input has rank 4"),
    ([0, 1, 1, 3], "node name: odd_perm): [TypeInferenceError] Attribute perm for Transpose "
                   "has repeated value: 1"),  # the checker's
])
def test_a_transpose_perm_that_does_not_fit_names_the_node(tmp_path, edgecnn_cmd, perm,
                                                           message):
    """A Transpose whose perm does not fit its rank-4 input's axes: `convert` names the
    node and the perm in one line (a short perm was an IndexError in the layout rule)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], name="odd_perm", perm=perm)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    result = subprocess.run([*edgecnn_cmd, "convert", str(path), "--out",
                             str(tmp_path / "odd.tflite")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "odd.tflite").exists()


# --- the model's interface: one [N, classes] logits tensor, 1 or 3 input channels -------------

TESTS = str(Path(__file__).parent)
HINT = "(give the factory a num_classes parameter and size the head with it: edgecnn passes 10)"


@pytest.mark.parametrize("command, model, expected", [
    ("export", "TupleOut", "returns a tuple of 2 values; edgecnn needs one [N, 10] logits tensor"),
    ("train", "SpatialOut", "returns [N, 10, 8, 8]; edgecnn needs [N, 10] logits (a classifier: "
                            "pool and flatten before the head)"),
    ("export", "seven_logits", f"returns 7 logits per image; digits has 10 classes {HINT}"),
    ("train", "imagenet_head", f"returns 1000 logits per image; digits has 10 classes {HINT}"),
    ("export", "four_channel_net", ": its first convolution (conv.0) takes 4 input channels and "
                                   "the images of digits have 1; edgecnn gives a model grey (1 "
                                   "channel) or RGB (3) images"),
    ("export", "MCDropout", "gives different outputs for the same input in eval mode (a random "
                            "op eval() does not switch off: F.dropout(..., training=True)? "
                            "torch.rand?); edgecnn needs a deterministic model to export"),
], ids=["tuple", "spatial", "7-classes", "1000-classes", "4-channels", "random-in-eval"])
def test_a_model_interface_misfit_stops_before_training(edgecnn_cmd, tmp_path, monkeypatch,
                                                        command, model, expected):
    """A model that returns a tuple, a spatial map or another class count, wants 4
    channels, or is random in eval mode: one line naming it as typed, before any epoch (a
    traceback in the training loop, a failure at validate after all the work, or, for
    F.dropout(training=True), a misleading batch-1 mismatch at export, before)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get(
        "PYTHONPATH")])))
    out = tmp_path / "out"
    args = ["export", "--int8", "--ptq"] if command == "export" else ["train"]
    result = _cli(edgecnn_cmd, *args, f"user_models:{model}", "--data", "digits", "--epochs",
                  "1", "--out", str(out))
    assert _one_error(result) == f"error: user_models:{model} {expected}".replace(" :", ":")
    assert "epoch" not in result.stdout + result.stderr
    assert not out.exists()


def test_a_checkpoint_of_another_class_count_stops_before_quantizing(edgecnn_cmd, tmp_path,
                                                                    monkeypatch, digits):
    """--checkpoint: the loaded model against its own record's class count, before PTQ
    (export --int8) or the fp32 ONNX (export)."""
    from user_models import imagenet_head

    from edgecnn.checkpoint import ModelConfig, save_checkpoint
    from edgecnn.train import preprocessing_for

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get(
        "PYTHONPATH")])))
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, imagenet_head(), ModelConfig(
        "user_models:imagenet_head", preprocessing_for(digits), {"num_classes": 10}, "digits"))
    for args in (["--int8", "--ptq"], ["--formats", "onnx"]):  # the int8 pipeline, fp32 export
        result = _cli(edgecnn_cmd, "export", *args, "user_models:imagenet_head", "--checkpoint",
                      str(ckpt), "--out", str(tmp_path / "out"))
        assert _one_error(result) == (f"error: user_models:imagenet_head returns 1000 logits "
                                      f"per image; {ckpt / 'config.json'} has 10 classes {HINT}")
        assert not (tmp_path / "out" / "quantized").exists()
        assert not (tmp_path / "out" / "model_fp32.onnx").exists()


def test_a_branch_on_the_batch_size_is_caught_at_export(edgecnn_cmd, tmp_path, monkeypatch,
                                                        digits):
    """torch.export traces batch 2 and drops a `x.shape[0] == 1` branch: the fp32 ONNX is
    compared with the model at batch 1 and refused, nothing written; the same model
    without the branch exports."""
    from user_models import BatchOneBranch, TinyNet

    from edgecnn.checkpoint import ModelConfig, save_checkpoint
    from edgecnn.train import preprocessing_for

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get(
        "PYTHONPATH")])))
    record = preprocessing_for(digits)
    for model in (BatchOneBranch(), TinyNet()):
        name = f"user_models:{type(model).__name__}"
        save_checkpoint(tmp_path / name, model, ModelConfig(name, record, {}, "digits"))
        result = _cli(edgecnn_cmd, "export", name, "--checkpoint", str(tmp_path / name),
                      "--formats", "onnx", "--out", str(tmp_path / f"{name}_out"))
        if isinstance(model, BatchOneBranch):
            line = _one_error(result)
            assert line.startswith(f"error: {name}: the exported ONNX differs from the model at "
                                   "batch 1 (max |diff| "), line
            assert line.endswith("): a Python branch on the input's shape? torch.export fixes "
                                 "such a branch for the batch it traces (2)"), line
            assert not (tmp_path / f"{name}_out" / "model_fp32.onnx").exists()
        else:
            assert result.returncode == 0, result.stderr
            assert (tmp_path / f"{name}_out" / "model_fp32.onnx").is_file()


def test_a_grey_dataset_feeds_an_rgb_model(tmp_path):
    """A factory without in_channels whose first conv takes RGB, on grey digits: the record
    says 3 channels (grey repeated, the data's statistics per channel) and every artifact
    takes 3 channels; training, calibration and validation read the same record."""
    import onnx

    import edgecnn
    from edgecnn.quant.recipe import PTQ
    from edgecnn.reference import Training
    from edgecnn.runtime.backends.tflite import interpreter
    from edgecnn.train import TrainConfig

    report = edgecnn.export_int8("user_models:rgb_net", data="digits", recipe=PTQ(),
                                 reference=Training(TrainConfig(epochs=2, lr=1e-2)),
                                 bench_runs=2, out=tmp_path, show_progress=False)
    record = json.loads((tmp_path / "preprocessing.json").read_text())
    assert record["channels"] == 3 and len(set(record["mean"])) == 1 == len(set(record["std"]))
    config = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert config["options"]["in_channels"] == 3
    for name in ("model_fp32.onnx", "model_int8.onnx"):
        dims = onnx.load(str(tmp_path / name)).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value for d in dims[1:]] == [3, 32, 32], name
    for name in ("model_fp32.tflite", "model_int8.tflite"):
        shape = interpreter(tmp_path / name).get_input_details()[0]["shape"]
        assert list(shape[1:]) == [32, 32, 3], name
    # it learnt from the repeated grey, and onnxruntime, fed by the record, agrees with torch
    accuracy = report.data["reference_accuracy"]
    assert accuracy > 0.3 and abs(accuracy - report.data["torch_fp32_accuracy"]) <= 1 / 359
