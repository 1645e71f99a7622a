"""Host-side pieces of the Raspberry Pi check (scripts/pi_check.sh); no emulation here.

The emulated run itself takes half an hour and root; it runs as the CI step
.ci/pi_check. These tests cover what decides its verdict: the logits
comparison, the "cannot emulate -> skip" path, argument handling, and the
commands it builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devtools import pi_check, pi_root
from devtools.pi_compare import compare_logits, relative_diff, top1_agreement


def _logits(n: int = 1000, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 4, (n, classes)).astype(np.float32)


# --- comparison criteria ---------------------------------------------------------------------

def test_identical_logits_pass_every_criterion() -> None:
    x = _logits()
    for precision, step in (("fp32", None), ("int8", 0.125)):
        c = compare_logits("m", x, x.copy(), precision=precision, output_step=step)
        assert c.passed and c.top1_agreement == 1.0 and c.max_abs_diff == 0.0


def test_int8_one_step_passes_two_steps_fail() -> None:
    step = 0.25
    x86 = np.round(_logits() / step) * step
    pi = x86.copy()
    pi[3, 2] += step  # one step on one logit: allowed
    assert compare_logits("m", pi, x86, precision="int8", output_step=step).passed
    pi[5, 1] += 2 * step
    c = compare_logits("m", pi, x86, precision="int8", output_step=step)
    assert not c.passed and c.max_steps == pytest.approx(2.0)
    assert "quantization steps" in c.failures[0]


def test_fp32_relative_tolerance_is_per_image_scale() -> None:
    x86 = _logits()
    pi = x86 * (1 + 5e-5)  # 5e-5 relative everywhere: within 1e-4
    assert compare_logits("m", pi, x86, precision="fp32").passed
    pi = x86.copy()
    pi[0, 0] += 3e-4 * np.abs(x86[0]).max()
    c = compare_logits("m", pi, x86, precision="fp32")
    assert not c.passed and c.max_rel_diff == pytest.approx(3e-4, rel=1e-2)


def test_near_zero_logit_is_judged_against_the_image_not_itself() -> None:
    x86 = np.array([[10.0, 1e-6, -3.0]], np.float32)
    pi = x86 + np.array([[0.0, 5e-4, 0.0]], np.float32)  # 5e-5 of the largest logit
    assert relative_diff(pi, x86).max() == pytest.approx(5e-5, rel=1e-3)
    assert compare_logits("m", pi, x86, precision="fp32").passed


def test_top1_agreement_needs_999_per_mille() -> None:
    x86 = _logits(2000)
    pi = x86.copy()
    flip = np.argsort(-x86, axis=1)[:, 1]  # make the runner-up win on a few images
    for i in range(2):
        pi[i, flip[i]] = x86[i].max() + 1
    # int8 with a coarse step so only the agreement can fail
    assert compare_logits("m", pi, x86, precision="int8", output_step=100.0).passed  # 99.9%
    pi[2, flip[2]] = x86[2].max() + 1
    c = compare_logits("m", pi, x86, precision="int8", output_step=100.0)
    assert not c.passed and c.top1_agreement == pytest.approx(0.9985)


def test_ties_break_the_same_way_on_both_sides() -> None:
    x = np.array([[1.0, 1.0, 0.0]])
    assert top1_agreement(x, x.copy()) == 1.0


def test_shape_mismatch_and_nan_fail() -> None:
    x86 = _logits(10)
    assert not compare_logits("m", x86[:, :5], x86, precision="fp32").passed
    pi = x86.copy()
    pi[0, 0] = np.nan
    assert "non-finite" in compare_logits("m", pi, x86, precision="fp32").failures[0]


# --- cannot emulate -> skip ------------------------------------------------------------------

def _artifacts(tmp_path: Path) -> Path:
    for name in ("model_fp32.onnx", "model_int8.tflite"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_host_that_cannot_emulate_skips_with_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(pi_root, "emulation_problem", lambda: "no binfmt_misc (test)")
    assert pi_check.main([str(_artifacts(tmp_path)), "npz:val.npz"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "skipped" in out[0] and "no binfmt_misc" in out[0]
    result = json.loads((tmp_path / "pi_check.json").read_text())
    assert result == {"status": "skipped", "reason": "no binfmt_misc (test)"}


def test_not_root_is_a_reason_to_skip(monkeypatch) -> None:
    monkeypatch.setattr(pi_root.os, "geteuid", lambda: 1000)
    assert "root" in pi_root.emulation_problem()


def test_bad_arguments_exit_2(tmp_path, capsys) -> None:
    assert pi_check.main([str(tmp_path), "npz:val.npz"]) == 2
    assert "none of model_fp32.onnx" in capsys.readouterr().err
    assert pi_check.main([str(_artifacts(tmp_path)), "digits", "--venvs", "torch"]) == 2


# --- planning and commands -------------------------------------------------------------------

def test_validate_plan_uses_fp32_onnx_reference_and_the_venvs_own_format(tmp_path) -> None:
    for name in pi_check.ARTIFACTS:
        (tmp_path / name).write_bytes(b"x")
    check = pi_check.Check(tmp_path, "digits", tmp_path / "root", 5,
                           ["tflite_runtime", "onnxruntime"], [])
    ref, cands = check.validate_plan("tflite_runtime")
    assert ref.name == "model_fp32.onnx"
    assert [c.name for c in cands] == ["model_fp32.tflite", "model_int8.tflite"]
    assert [c.name for c in check.validate_plan("onnxruntime")[1]] == ["model_int8.onnx"]
    args = pi_check.validate_args(ref, cands, "npz:val.npz", ["--max-drop", "2"], "v.json")
    assert args[:3] == ["validate", "--reference", "model_fp32.onnx"]
    assert args.count("--candidate") == 2 and args[-2:] == ["--max-drop", "2"]


def test_root_command_has_clean_env_private_mounts_and_fake_cpuinfo(tmp_path) -> None:
    cmd = pi_root.root_command(tmp_path, ["edgecnn", "bench", "m.tflite"], cwd="/opt/w",
                               env={"PATH": "/v/bin:/usr/bin"}, cpuinfo=tmp_path / "cpu")
    assert cmd[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    env_at = cmd.index("-i")
    assert cmd[env_at - 1] == "/usr/bin/env" and "PATH=/v/bin:/usr/bin" in cmd
    assert not any(a.startswith("PIP_FIND_LINKS") for a in cmd)  # nothing leaks from the host
    assert cmd[-4:] == ["/opt/w", "edgecnn", "bench", "m.tflite"]
    assert str(tmp_path / "cpu") in cmd


def test_fake_cpuinfo_reads_as_a_cortex_a72(tmp_path, monkeypatch) -> None:
    from edgecnn.runtime import machine

    text = pi_root.fake_cpuinfo(4)
    assert text.count("processor\t:") == 4
    monkeypatch.setattr(machine, "_read", lambda p: text if p == "/proc/cpuinfo" else "")
    assert machine.cpu_model() == "Cortex-A72"


def test_root_marker_must_match_the_current_key(tmp_path) -> None:
    assert not pi_root.root_ready(tmp_path)
    (tmp_path / pi_root.MARKER).write_text(json.dumps({"key": pi_root.ROOT_KEY}))
    assert pi_root.root_ready(tmp_path)
    (tmp_path / pi_root.MARKER).write_text(json.dumps({"key": {"suite": "bullseye"}}))
    assert not pi_root.root_ready(tmp_path)


def test_wheel_digest_ignores_zip_timestamps(tmp_path) -> None:
    import zipfile

    from devtools.pi_venvs import wheel_digest

    paths = []
    for i, stamp in enumerate(((2020, 1, 1, 0, 0, 0), (2026, 6, 1, 12, 0, 0))):
        path = tmp_path / f"w{i}.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(zipfile.ZipInfo("edgecnn/__init__.py", stamp), "x = 1\n")
        paths.append(path)
    assert wheel_digest(paths[0]) == wheel_digest(paths[1])


def test_root_emulates_a_pi4_cpu_not_qemus_max() -> None:
    assert pi_root.BASE_ENV["QEMU_CPU"] == "cortex-a72" or "EDGECNN_PI_CPU" in pi_root.os.environ


def test_the_wheel_carries_no_emulation_tooling() -> None:
    """devtools/ (debootstrap, chroot, binfmt) stays in the repository: the package a user or
    a device installs is edgecnn/ alone (issue 17, item 7)."""
    import zipfile

    from edgecnn.runtime.remote_wheels import edgecnn_wheel

    wheel = edgecnn_wheel(pi_check.SRC).local
    assert wheel is not None
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        code = b"".join(zf.read(n) for n in names if n.endswith(".py"))
    assert any(n.startswith("edgecnn/runtime/") for n in names)
    assert not [n for n in names if not n.startswith(("edgecnn/", "edgecnn-"))], names
    assert b"debootstrap" not in code and b"chroot" not in code
