"""`edgecnn bench --remote` through a real OpenSSH server on 127.0.0.1 (see ssh_server.py).

The "device" is this machine reached over ssh with a key made for the test: the
remote venv is created from a wheel of this checkout plus runtime wheels
downloaded for the device's platform (`--offline`), dsc_net's fp32 and int8
files are benched there and the JSON is checked against a local run of the
same files (same files by sha256, sizes, backends, precisions, inputs; latency
within a generous noise factor: both runs are on the same 2-core machine).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import ssh_server

from edgecnn.errors import EdgecnnError
from edgecnn.runtime import remote, remote_wheels
from edgecnn.runtime.bench import BenchConfig, BenchReport, run_bench

#: Remote and local p50 of the same file on the same machine agree within this factor.
NOISE_FACTOR = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = ssh_server.unavailable()
    if reason:
        pytest.skip(f"no sshd: {reason}")
    try:
        srv = ssh_server.start(tmp_path_factory.mktemp("sshd"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"sshd cannot run here: {str(exc).splitlines()[0]}")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def dsc_files(dsc_reference, tmp_path_factory) -> list[Path]:
    """dsc_net fp32 ONNX, int8 QDQ ONNX and full-int8 TFLite (converted from the QDQ file)."""
    from edgecnn.export.tflite import convert

    paths = dsc_reference[5]
    out = tmp_path_factory.mktemp("dsc_files")
    files = []
    for src, name in ((paths["fp32"], "model_fp32.onnx"), (paths["uint8"], "model_int8.onnx")):
        files.append(out / name)
        files[-1].write_bytes(Path(src).read_bytes())
    files.append(convert(paths["int8"], out / "model_int8.tflite"))
    return files


@pytest.fixture(scope="module")
def cli(edgecnn_cmd, blocked_imports_env):
    env = blocked_imports_env("torch", "torchao")  # the workstation side is torch-free too

    def run(*args):
        return subprocess.run([*edgecnn_cmd, *map(str, args)], capture_output=True, text=True,
                              env={**env, "COLUMNS": "200"}, timeout=600)

    return run


def test_bench_remote_matches_local_run(server, dsc_files, cli, tmp_path_factory, digits_npz):
    base = tmp_path_factory.mktemp("device") / "edgecnn-remote"
    flags = ["--remote", server.target, "--ssh-command", " ".join(server.ssh_command),
             "--remote-dir", str(base), "--offline", "--runs", "60", "--warmup", "5"]
    out = tmp_path_factory.mktemp("out")
    first = cli("bench", *dsc_files, *flags, "--json", out / "remote.json")
    assert first.returncode == 0, first.stderr
    assert "device" in first.stdout and server.target in first.stdout
    report = json.loads((out / "remote.json").read_text())["devices"][0]
    local = run_bench(dsc_files, BenchConfig(threads=(1,), runs=60, warmup=5), progress=False)

    setup = report["device"]
    assert setup["target"] == server.target and setup["venv_action"] == "created"
    assert setup["offline"] and setup["requirements"] == ["ai-edge-litert"]
    assert setup["copied"]["skipped"] == 0 and setup["copied"]["sent"] >= 3 + 2  # + wheels
    assert (base / "0.1.0" / "bin" / "edgecnn").exists()
    machine = report["machine"]
    assert {"board", "cpu", "governor", "os", "python", "temperature_c"} <= set(machine)
    assert {"edgecnn", "onnxruntime", "ai-edge-litert"} <= set(machine["packages"])
    assert "torch" not in machine["packages"]  # the device venv has the torch-free package

    rows = BenchReport.from_dict(report).results  # the device's JSON, read back typed
    assert len(rows) == len(local.results) == 3
    for r, loc, path in zip(rows, local.results, dsc_files, strict=True):
        assert r.artifact == str(path) and r.name == loc.name == path.name
        assert r.sha256 == remote.sha256(path)
        assert r.remote_artifact.endswith(f"/{path.name}")
        for key in ("size_bytes", "backend", "precision", "input", "threads", "model"):
            assert getattr(r, key) == getattr(loc, key), key
        assert r.latency.runs == loc.latency.runs
        ratio = r.p50_ms / loc.p50_ms
        assert 1 / NOISE_FACTOR < ratio < NOISE_FACTOR, (path.name, r.p50_ms, loc.p50_ms)
    assert [r["backend"] for r in report["results"]] == ["onnxruntime", "onnxruntime",
                                                         "ai_edge_litert"]
    assert [r["precision"] for r in report["results"]] == ["fp32", "int8", "int8"]

    # again, with the accuracy gate: the venv and the files are reused, only the npz is sent
    second = cli("bench", *dsc_files, *flags, "--runs", "5", "--validate",
                 f"npz:{digits_npz}", "--gate", "confident-fail", "--json", out / "again.json")
    assert second.returncode == 0, second.stderr
    again = json.loads((out / "again.json").read_text())
    setup = again["devices"][0]["device"]
    assert setup["venv_action"] == "reused" and setup["copied"]["sent"] == 0
    check = again["validate"][0]
    sidecars = sum(Path(f"{f}.json").is_file() for f in dsc_files)
    assert check["device"]["copied"] == {"sent": 1, "skipped": 3 + sidecars,
                                         "bytes": digits_npz.stat().st_size}
    from edgecnn.runtime.validate import Bounds, run_validate

    here = run_validate(dsc_files[0], dsc_files[1:], f"npz:{digits_npz}",
                        Bounds(gate="confident-fail"))
    assert check["bounds"]["gate"] == "confident-fail"  # --gate reached the device
    assert check["reference"]["accuracy"] == here.reference.accuracy
    for c, h in zip(check["candidates"], here.candidates, strict=True):
        assert (c["name"], c["accuracy"], c["passed"]) == (h.name, h.accuracy, h.passed)
        assert c["drop_ci"] == list(h.drop_ci)
    assert "agreement" in second.stdout and server.target in second.stdout


def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unreachable_and_refused_key_are_one_line(server, cli, tiny_artifacts, tmp_path):
    art = tiny_artifacts["fp32.onnx"]
    ssh = " ".join(server.ssh_command)
    closed = ssh_server._free_port()
    result = cli("bench", art, "--remote", f"{server.user}@127.0.0.1:{closed}",
                 "--ssh-command", ssh, "--remote-dir", tmp_path / "d")
    _one_line_error(result, f"127.0.0.1:{closed}: host unreachable", "Connection refused")

    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    config = Path(server.ssh_command[-1]).read_text()
    (tmp_path / "cfg").write_text(config.replace(str(Path(server.ssh_command[-1]).parent
                                                     / "client_key"), str(stranger)))
    result = cli("bench", art, "--remote", server.target, "--ssh-command",
                 f"ssh -F {tmp_path / 'cfg'}", "--remote-dir", tmp_path / "d")
    _one_line_error(result, f"{server.target}: authentication failed")


def _wrapper(tmp_path: Path, body: str) -> str:
    """An --ssh-command that runs the remote command here (last argument), after `body`."""
    script = tmp_path / "fake_ssh"
    script.write_text(f'#!/bin/sh\nfor last; do :; done\n{body}\n')
    script.chmod(0o755)
    return str(script)


def test_device_without_python_and_full_disk(cli, tiny_artifacts, tmp_path):
    art = tiny_artifacts["fp32.onnx"]
    bare = tmp_path / "bare-bin"  # a "device" whose PATH has a shell and nothing else
    bare.mkdir()
    os.symlink("/bin/sh", bare / "sh")
    no_python = _wrapper(tmp_path, f'exec env -i PATH={bare} /bin/sh -c "$last"')
    result = cli("bench", art, "--remote", "pi@nopython", "--ssh-command", no_python,
                 "--remote-dir", tmp_path / "d")
    _one_line_error(result, "pi@nopython: no Python 3.10+ on the device")

    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace here for the full-disk case")
    small = tmp_path / "small"
    small.mkdir()
    tiny_fs = _wrapper(tmp_path, f'exec unshare --mount /bin/sh -c \'mount -t tmpfs -o size=1m '
                                 f'tmpfs {small} && exec /bin/sh -c "$0"\' "$last"')
    result = cli("bench", art, "--remote", "pi@tiny", "--ssh-command", tiny_fs,
                 "--remote-dir", small / "edgecnn-remote")
    _one_line_error(result, "pi@tiny: disk full", "MB free")


def test_no_wheel_for_the_devices_platform(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECNN_REMOTE_CACHE", str(tmp_path))
    info = {"python": "3.11.2", "machine": "riscv64", "libc": ["glibc", "2.36"]}
    with pytest.raises(EdgecnnError, match=r"^pi@rv: no wheel for the device's platform "
                                           r"\(manylinux_2_36_riscv64, Python 3.11.2\)"):
        remote_wheels.download_for(info, ["onnxruntime"], "pi@rv")


def test_platform_tags_and_target_parsing():
    tags = remote_wheels.platform_tags("aarch64", ["glibc", "2.36"])
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert "manylinux2014_aarch64" in tags and tags[-1] == "linux_aarch64"
    assert "manylinux_2_4_aarch64" not in tags
    assert remote_wheels.platform_tags("armv7l", [])[0] == "musllinux_1_2_armv7l"
    t = remote.Target.parse("pi@raspberrypi.local:2222")
    assert (t.user, t.host, t.port, str(t)) == ("pi", "raspberrypi.local", 2222,
                                                "pi@raspberrypi.local:2222")
    assert remote.Target.parse("mypi") == remote.Target("mypi")
    assert remote.Target.parse("root@[::1]:22") == remote.Target("::1", "root", 22)
    for bad in ("pi@", "pi@host:99999", "a b"):  # the library names the parameter, the CLI
        with pytest.raises(EdgecnnError, match="^remote ") as caught:  # the flag
            remote.Target.parse(bad)
        assert caught.value.for_cli().startswith("--remote ")
    d = remote.Device(remote.Target.parse("pi@h:2"), ("ssh", "-F", "cfg"))
    argv = d.argv("true")
    assert argv[:3] == ["ssh", "-F", "cfg"] and "BatchMode=yes" in argv
    assert argv[-3:] == ["2", "pi@h", "true"] and any(a.startswith("ConnectTimeout=")
                                                      for a in argv)
