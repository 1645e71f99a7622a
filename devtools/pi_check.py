"""Raspberry Pi check: `edgecnn bench` and `validate` in emulated Raspberry Pi OS, against x86.

    python -m devtools.pi_check ARTIFACT_DIR DATA_SPEC      (or scripts/pi_check.sh)

1. prepare (or reuse) the arm64 bookworm root (`devtools.pi_root`);
2. install the working tree's edgecnn into one venv per runtime there
   (`devtools.pi_venvs`);
3. copy in the artifacts and the validation set, and run in each venv the
   logits dump, `edgecnn bench` and `edgecnn validate`;
4. run the same dump and validate on this x86 host and compare
   (`devtools.pi_compare`).

Everything lands in ARTIFACT_DIR/pi_check.json. Exit 0 when every step ran and
every comparison holds, or when the host cannot emulate at all (status
"skipped", said in one line); 1 when anything failed; 2 for bad arguments.
Emulated timings mean nothing: the bench runs to prove that bench runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devtools import pi_root, pi_venvs
from devtools.pi_compare import compare_logits
from edgecnn.errors import EdgecnnError
from edgecnn.runtime.validate import ValidationReport

#: What `edgecnn export --int8` writes; the check runs those that are present.
ARTIFACTS = ("model_fp32.onnx", "model_int8.onnx", "model_fp32.tflite", "model_int8.tflite")
WORK = "/opt/edgecnn/work"
SRC = Path(__file__).resolve().parents[1]
#: Copied next to the artifacts and run as a script (the venvs hold only the edgecnn wheel).
DUMP_SCRIPT = Path(__file__).with_name("pi_dump.py")


def find_artifacts(directory: Path) -> list[Path]:
    """The exported artifacts present in `directory`, in `ARTIFACTS` order."""
    return [directory / name for name in ARTIFACTS if (directory / name).is_file()]


def reference_for(artifacts: list[Path]) -> Path:
    """validate's reference: the fp32 ONNX model when there is one (as on a Pi), else fp32."""
    for name in ("model_fp32.onnx", "model_fp32.tflite"):
        found = [a for a in artifacts if a.name == name]
        if found:
            return found[0]
    return artifacts[0]


def validate_args(reference: Path, candidates: list[Path], data: str, bounds: list[str],
                  json_path: str) -> list[str]:
    """The `edgecnn validate` arguments, the same on both sides."""
    args = ["validate", "--reference", reference.name, "--data", data, "--json", json_path]
    for c in candidates:
        args += ["--candidate", c.name]
    return [*args, *bounds]


def write_validation_set(spec: str, out: Path) -> int:
    """The spec's validation split as an npz (a Pi has no scikit-learn for `digits`)."""
    from edgecnn.data import load, save_npz

    dataset = load(spec)
    save_npz(dataset, out, validation_only=True)
    return len(dataset.val_labels)


def _host(python: Path, args: list[str], cwd: Path, log: Path,
          what: str) -> tuple[int, float]:
    """Run an x86 twin venv's `python args` in `cwd`, output appended to `log`."""
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n$ {what}\n")
        out.flush()
        code = subprocess.run([str(python), *args], cwd=cwd, stdout=out,
                              stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - start


class Check:
    """One run of the check: its work directories, timings, results and failures."""

    def __init__(self, artifact_dir: Path, data: str, root: Path, runs: int,
                 venvs: list[str], bounds: list[str]) -> None:
        self.artifact_dir, self.data, self.root = artifact_dir, data, root
        self.runs, self.venvs, self.bounds = runs, venvs, bounds
        self.artifacts = find_artifacts(artifact_dir)
        self.x86 = artifact_dir / "pi_check_x86"
        self.log = artifact_dir / "pi_check.log"
        self.times: dict[str, float] = {}
        self.wheel = Path()
        self.failures: list[str] = []
        self.result: dict = {"status": "running", "artifact_dir": str(artifact_dir),
                             "data": data, "root": str(root), "artifacts":
                             [a.name for a in self.artifacts], "times_s": self.times}

    # --- steps ----------------------------------------------------------------------------
    def x86_side(self) -> dict:
        """Validation set, wheel, and per venv its x86 twin's logits and validate verdicts."""
        shutil.rmtree(self.x86, ignore_errors=True)
        self.x86.mkdir(parents=True)
        start = time.monotonic()
        self.result["num_images"] = write_validation_set(self.data, self.x86 / "val.npz")
        for a in self.artifacts:
            shutil.copy2(a, self.x86 / a.name)
            if Path(f"{a}.json").exists():
                shutil.copy2(f"{a}.json", self.x86 / f"{a.name}.json")
        self.wheel = pi_venvs.build_wheel(SRC)
        shutil.copy2(DUMP_SCRIPT, self.x86 / DUMP_SCRIPT.name)
        twins = self.root.parent / f"{self.root.name}.x86-venvs"
        dumps, verdicts, installs = {}, {}, {}
        for venv in self.venvs:
            arts = [a.name for a in self.artifacts if a.suffix == pi_venvs.SUFFIXES[venv]]
            if not arts:
                continue
            python, installs[venv] = pi_venvs.ensure_x86_venv(twins, venv, self.wheel, self.log)
            out = f"x86-logits-{venv}.npz"
            code, _ = _host(python, [DUMP_SCRIPT.name, "--data", "npz:val.npz",
                                     "--out", out, "--backend", venv, *arts],
                            self.x86, self.log, f"x86 logits ({venv})")
            if code != 0:
                raise pi_root.RootError(f"x86 logits dump ({venv}) failed, see {self.log}")
            dumps[venv] = self.x86 / out
            ref, cands = self.validate_plan(venv)
            if cands:
                out = f"x86-validate-{venv}.json"
                code, _ = _host(python, ["-m", "edgecnn", *validate_args(
                    ref, cands, "npz:val.npz", self.bounds, out)],
                                self.x86, self.log, f"x86 validate ({venv})")
                if code not in (0, 1):
                    raise pi_root.RootError(f"x86 validate ({venv}) failed (exit {code}), "
                                            f"see {self.log}")
                verdicts[venv] = json.loads((self.x86 / out).read_text())
        self.result["x86_venvs"] = installs
        self.times["x86_side"] = round(time.monotonic() - start, 1)
        return {"dumps": dumps, "validate": verdicts}

    def validate_plan(self, venv: str) -> tuple[Path, list[Path]]:
        """validate's reference and the candidates venv `venv` is there to run."""
        ref = reference_for(self.artifacts)
        cands = [a for a in self.artifacts
                 if a.suffix == pi_venvs.SUFFIXES[venv] and a != ref]
        return ref, cands

    def prepare_root(self) -> Path:
        """Build or reuse the root, refresh host files, stage wheel + artifacts; cpuinfo."""
        if pi_root.root_ready(self.root):
            self.result["root_action"] = "reused"
        else:
            stages = pi_root.build_root(self.root, self.log)
            self.times.update({k: round(v, 1) for k, v in stages.items()})
            self.result["root_action"] = "built"
        pi_root.refresh_host_files(self.root, self.log)
        wheels = self.root / pi_venvs.WHEEL_DIR.lstrip("/")
        shutil.rmtree(wheels, ignore_errors=True)
        wheels.mkdir(parents=True)
        shutil.copy2(self.wheel, wheels / self.wheel.name)
        work = self.root / WORK.lstrip("/")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(self.x86, work, ignore=shutil.ignore_patterns("x86-*"))
        cpuinfo = self.root.parent / f"{self.root.name}.cpuinfo"
        cpuinfo.write_text(pi_root.fake_cpuinfo(os.cpu_count() or 1))
        self.result["wheel"] = self.wheel.name
        return cpuinfo

    def pi_side(self, venv: str, cpuinfo: Path) -> dict:
        """Install `venv`, then dump logits, bench and validate in it; results and timings."""
        info: dict = {"install": pi_venvs.ensure_venv(self.root, venv, self.wheel, self.log)}
        self.times[f"venv_{venv}"] = info["install"]["seconds"]
        ref, cands = self.validate_plan(venv)
        arts = [a for a in self.artifacts if a.suffix == pi_venvs.SUFFIXES[venv]]
        if not arts:
            info["skipped"] = f"no {pi_venvs.SUFFIXES[venv]} artifacts"
            return info
        bin_dir = f"{pi_venvs.VENV_HOME}/{venv}/bin"
        env = {"PATH": f"{bin_dir}:{pi_root.BASE_ENV['PATH']}", "COLUMNS": "160"}
        names = [a.name for a in arts]
        steps = {
            "dump": [f"{bin_dir}/python", DUMP_SCRIPT.name, "--data",
                     "npz:val.npz", "--out", f"pi-logits-{venv}.npz", "--backend", venv,
                     *names],
            "bench": ["edgecnn", "bench", *names, "--threads", "1", "--warmup", "3", "--runs",
                      str(self.runs), "--json", f"pi-bench-{venv}.json"],
            "validate": ["edgecnn", *validate_args(ref, cands, "npz:val.npz", self.bounds,
                                                   f"pi-validate-{venv}.json")],
        }
        if not cands:
            del steps["validate"]
        work = self.root / WORK.lstrip("/")
        for step, argv in steps.items():
            log = work / f"pi-{step}-{venv}.log"
            code, seconds = pi_root.run_logged(
                pi_root.root_command(self.root, argv, cwd=WORK, env=env, cpuinfo=cpuinfo),
                log, " ".join(argv), check=False)
            self.times[f"{step}_{venv}"] = round(seconds, 1)
            info[f"{step}_exit"] = code
            if step == "bench":
                info["bench_output"] = log.read_text(errors="replace")
            ok = code in (0, 1) if step == "validate" else code == 0
            if not ok:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                self.failures.append(f"{venv}: {step} exited {code} inside the root: {tail}")
        for step in ("bench", "validate"):
            path = work / f"pi-{step}-{venv}.json"
            if path.exists():
                info[step] = json.loads(path.read_text())
        return info

    # --- comparison -----------------------------------------------------------------------
    def compare(self, venv: str, info: dict, x86: dict) -> list[dict]:
        """The logits and validate verdicts of `venv` against x86; failures recorded."""
        from devtools.pi_dump import read_dump

        dump = self.root / WORK.lstrip("/") / f"pi-logits-{venv}.npz"
        if info.get("dump_exit") != 0 or not dump.exists():
            return []
        pi_logits, pi_meta = read_dump(dump)
        x86_logits, x86_meta = read_dump(x86["dumps"][venv])
        rows = []
        for name, logits in pi_logits.items():
            meta = x86_meta[name]
            c = compare_logits(name, logits, x86_logits[name], precision=meta["precision"],
                               output_step=meta["output_step"]).to_dict()
            c.update(venv=venv, aarch64_backend=pi_meta[name]["backend"],
                     x86_backend=meta["backend"], aarch64_packages=pi_meta[name]["packages"],
                     x86_packages=meta["packages"])
            rows.append(c)
            self.failures += [f"{venv}: {name}: {f}" for f in c["failures"]]
        pi_val, x86_val = info.get("validate"), x86["validate"].get(venv)
        if pi_val and x86_val:
            x86_by_name = {c.name: c for c in ValidationReport.from_dict(x86_val).candidates}
            for c in ValidationReport.from_dict(pi_val).candidates:
                other = x86_by_name.get(c.name)
                if other is not None and other.passed != c.passed:
                    self.failures.append(
                        f"{venv}: validate verdict on {c.name} is "
                        f"{'pass' if c.passed else 'FAIL'} on aarch64 but "
                        f"{'pass' if other.passed else 'FAIL'} on x86")
        return rows

    # --- whole run ------------------------------------------------------------------------
    def run(self) -> int:
        """Every step, in order; writes pi_check.json; the exit code."""
        started = time.monotonic()
        self.log.write_text("")
        try:
            x86 = self.x86_side()
        except EdgecnnError as exc:  # the data spec or an artifact is bad: not the Pi's fault
            print(f"pi_check: {exc}", file=sys.stderr)
            return 2
        try:
            with pi_root.locked(self.root.parent / f".{self.root.name}.lock"):
                t = time.monotonic()
                cpuinfo = self.prepare_root()
                self.times["root_prepare_total"] = round(time.monotonic() - t, 1)
                self.result["venvs"], self.result["comparisons"] = {}, []
                for venv in self.venvs:
                    info = self.pi_side(venv, cpuinfo)
                    self.result["venvs"][venv] = info
                    self.result["comparisons"] += self.compare(venv, info, x86)
            self.result["x86_validate"] = x86["validate"]
        except pi_root.RootError as exc:
            self.failures.append(str(exc))
        self.times["total"] = round(time.monotonic() - started, 1)
        self.result["host"] = {"machine": platform.machine(), "python": platform.python_version()}
        self.result["failures"] = self.failures
        self.result["status"] = "failed" if self.failures else "passed"
        self.write()
        return 1 if self.failures else 0

    def write(self) -> None:
        out = self.artifact_dir / "pi_check.json"
        out.write_text(json.dumps(self.result, indent=2, default=str) + "\n")


def summary_lines(result: dict) -> list[str]:
    """Human lines for the end of a run: comparisons, failures, where the JSON is."""
    lines = []
    for c in result.get("comparisons", []):
        steps = f", {c['max_steps']:.2f} steps" if c["max_steps"] is not None else ""
        lines.append(f"  {c['venv']:15} {c['artifact']:18} top-1 {c['top1_agreement']:.2%}, "
                     f"max |diff| {c['max_abs_diff']:.3g} (rel {c['max_rel_diff']:.2e}{steps})"
                     f"  {'ok' if c['passed'] else 'FAIL'}")
    lines += [f"  FAIL {f}" for f in result.get("failures", [])]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line entry; see the module docstring."""
    parser = argparse.ArgumentParser(prog="pi_check", description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("data", help="data spec of the validation set, e.g. npz:val.npz")
    parser.add_argument("--root", type=Path, default=None,
                        help="the arm64 root (default $EDGECNN_PI_ROOT or "
                             "~/.cache/edgecnn-pi/bookworm-arm64)")
    parser.add_argument("--runs", type=int, default=20, help="bench runs (emulated: few)")
    parser.add_argument("--venvs", default=",".join(pi_venvs.VENVS),
                        help="comma-separated subset of " + ", ".join(pi_venvs.VENVS))
    parser.add_argument("--max-drop", default=None, help="passed on to edgecnn validate")
    parser.add_argument("--min-agreement", default=None, help="passed on to edgecnn validate")
    args = parser.parse_args(argv)
    venvs = [v for v in args.venvs.split(",") if v]
    unknown = [v for v in venvs if v not in pi_venvs.VENVS]
    if unknown or not venvs:
        print(f"pi_check: --venvs: unknown {', '.join(unknown) or '(none given)'}; "
              f"known: {', '.join(pi_venvs.VENVS)}", file=sys.stderr)
        return 2
    if not find_artifacts(args.artifact_dir):
        print(f"pi_check: {args.artifact_dir}: none of {', '.join(ARTIFACTS)} found",
              file=sys.stderr)
        return 2
    problem = pi_root.emulation_problem()
    if problem:
        print(f"pi check skipped: this host cannot emulate arm64 Raspberry Pi OS ({problem})")
        (args.artifact_dir / "pi_check.json").write_text(
            json.dumps({"status": "skipped", "reason": problem}, indent=2) + "\n")
        return 0
    bounds = [x for flag, v in (("--max-drop", args.max_drop),
                                ("--min-agreement", args.min_agreement)) if v is not None
              for x in (flag, v)]
    check = Check(args.artifact_dir.resolve(), args.data, (args.root or pi_root.default_root())
                  .resolve(), args.runs, venvs, bounds)
    code = check.run()
    print(f"pi check {check.result['status']} in {check.times['total']:.0f}s "
          f"({args.artifact_dir / 'pi_check.json'}):")
    for venv, info in check.result.get("venvs", {}).items():
        if info.get("bench_output"):
            print(f"--- edgecnn bench in the emulated Pi ({venv} venv) ---")
            print(info["bench_output"].strip())
    print("\n".join(summary_lines(check.result)))
    return code


if __name__ == "__main__":
    sys.exit(main())
