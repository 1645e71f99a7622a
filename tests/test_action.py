"""The composite GitHub Action (action.yml): its metadata against the schema, its steps for real.

GitHub runs each `run:` block of a composite action as `bash --noprofile --norc
-eo pipefail FILE`, with the step's `env:` (where `${{ inputs.x }}` and
`${{ github.action_path }}` are already substituted) and the GITHUB_OUTPUT /
GITHUB_STEP_SUMMARY files. The test does the same against dsc_net's real
artifacts, in a fresh venv standing in for what actions/setup-python gives (the
only `uses:` step). The metadata is checked with check-jsonschema's vendored
copy of SchemaStore's github-action schema (no network).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
pytest.importorskip("check_jsonschema", reason="pip install -e '.[dev]' (check-jsonschema)")


def _load(path: Path) -> dict:
    from ruamel.yaml import YAML  # comes with check-jsonschema

    return YAML(typ="safe").load(path.read_text())


def _check_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-actions", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_action_metadata_follows_the_schema(tmp_path):
    result = _check_schema(ACTION)
    assert result.returncode == 0, result.stdout + result.stderr
    action = _load(ACTION)
    assert action["runs"]["using"] == "composite"
    assert set(action["inputs"]) == {"reference", "candidates", "data", "max-drop",
                                     "min-agreement", "gate", "python-version"}
    for step in action["runs"]["steps"]:
        assert "uses" in step or step.get("shell") == "bash"  # composite run steps need shell
        # inputs reach scripts only through env: never ${{ }} inside a script (injection)
        assert "${{" not in step.get("run", "")
    broken = tmp_path / "action.yml"  # the check can fail: a run step without its shell
    broken.write_text(ACTION.read_text().replace("      shell: bash\n", "", 1))
    assert _check_schema(broken).returncode != 0


def _expand(value: str, inputs: dict[str, str]) -> str:
    """`${{ inputs.x }}` and `${{ github.action_path }}` as GitHub substitutes them."""
    def one(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr == "github.action_path":
            return str(ROOT)
        if expr.startswith("inputs."):
            return inputs[expr.removeprefix("inputs.")]
        raise AssertionError(f"unexpected expression {expr}")

    return re.sub(r"\$\{\{(.+?)\}\}", one, str(value))


def run_action(inputs: dict[str, str], venv: Path, workdir: Path) -> tuple[int, dict, str]:
    """Every `run:` step in order, as the runner does; (exit code, outputs, summary)."""
    action = _load(ACTION)
    defaults = {k: str(v.get("default", "")) for k, v in action["inputs"].items()}
    inputs = {**defaults, **inputs}
    summary, outputs = workdir / "summary.md", workdir / "output.txt"
    summary.write_text("")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "GITHUB_STEP_SUMMARY")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", RUNNER_TEMP=str(workdir),
               GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(outputs))
    code = 0
    for i, step in enumerate(action["runs"]["steps"]):
        if "run" not in step:
            assert step["uses"].startswith("actions/setup-python@")  # = the venv on PATH
            continue
        outputs.write_text("")
        script = workdir / f"step{i}.sh"
        script.write_text(step["run"])
        step_env = {**env, **{k: _expand(v, inputs) for k, v in step.get("env", {}).items()}}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=workdir, env=step_env, capture_output=True, text=True,
                              timeout=600)
        code = proc.returncode
        if code != 0:
            break
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if line)
    return code, values, summary.read_text()


@pytest.fixture(scope="module")
def action_venv(tmp_path_factory) -> Path:
    """An empty venv, as actions/setup-python leaves the job (the action installs into it)."""
    venv = tmp_path_factory.mktemp("setup-python") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return venv


def test_action_gates_dsc_net_artifacts(action_venv, dsc_reference, digits_npz,
                                        tmp_path_factory):
    from edgecnn.export.tflite import convert

    paths = dsc_reference[5]
    work = tmp_path_factory.mktemp("action-work")
    shutil.copy(paths["fp32"], work / "model_fp32.onnx")
    shutil.copy(paths["uint8"], work / "model_int8.onnx")
    convert(paths["int8"], work / "model_int8.tflite")
    shutil.copy(digits_npz, work / "val.npz")
    inputs = {"reference": "model_fp32.onnx", "candidates": "model_int8.onnx\nmodel_*.tflite",
              "data": "npz:val.npz"}
    code, outputs, summary = run_action(inputs, action_venv, work)
    assert code == 0, (outputs, summary)
    assert outputs["passed"] == "true" and Path(outputs["json"]).is_file()
    for name in ("model_fp32.onnx (reference)", "model_int8.onnx", "model_int8.tflite", "pass"):
        assert name in summary
    import json

    report = json.loads(Path(outputs["json"]).read_text())
    assert [c["name"] for c in report["candidates"]] == ["model_int8.onnx", "model_int8.tflite"]
    assert {c["backend"] for c in report["candidates"]} == {"onnxruntime", "ai_edge_litert"}
    packages = subprocess.run([str(action_venv / "bin" / "python"), "-m", "pip", "list"],
                              capture_output=True, text=True).stdout.lower()
    assert "ai-edge-litert" in packages and "torch " not in packages  # torch-free install

    # bounds no int8 file meets (every image in agreement): the step fails, named in the summary
    code, outputs, summary = run_action({**inputs, "min-agreement": "1.0"}, action_venv, work)
    agreements = [c["agreement"] for c in report["candidates"]]
    if min(agreements) == 1.0:
        pytest.skip("both int8 files agree with fp32 on every image: nothing to fail")
    assert code == 1 and outputs["passed"] == "false" and "FAIL" in summary
    # the gate input reaches validate: its report names it
    code, outputs, _ = run_action({**inputs, "gate": "confident-fail"}, action_venv, work)
    assert json.loads(Path(outputs["json"]).read_text())["bounds"]["gate"] == "confident-fail"
