"""Issue 16, kind 1: no .pt2 runs code. Each malicious archive is refused with one line."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fuzz_artifacts import _code_pickle  # noqa: E402

from edgecnn.errors import EdgecnnError  # noqa: E402
from edgecnn.safe_pt2 import check_archive, load_pt2  # noqa: E402


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


@pytest.fixture(scope="module")
def good_pt2(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "good.pt2"
    program = torch.export.export(_Tiny(), (torch.zeros(2, 4),))
    torch.export.save(program, str(path), extra_files={"edgecnn": "{}"})
    return path


def _rewrite(source: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(source) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    edit(entries)
    with zipfile.ZipFile(target, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return target


def _entry(entries: dict, part: str) -> str:
    return next(n for n in entries if part in n)


def _model_json(entries: dict, change) -> None:
    name = _entry(entries, "/models/")
    program = json.loads(entries[name])
    change(program)
    entries[name] = json.dumps(program).encode()


def test_a_good_program_loads(good_pt2):
    program, extra = load_pt2(good_pt2, ("edgecnn",))
    assert extra["edgecnn"] == "{}"
    out = program.module()(torch.ones(2, 4))
    assert out.shape == (2, 3)


def test_sample_inputs_pickle_payload_is_refused_by_the_cli(good_pt2, tmp_path, edgecnn_cmd):
    """The issue's reproduction: sample_inputs replaced by a __reduce__ payload; torch's own
    load retries with weights_only=False and runs it. bench and validate must refuse."""
    marker = tmp_path / "PWNED"

    def edit(entries):
        entries[_entry(entries, "sample_inputs")] = _code_pickle(str(marker))

    bad = _rewrite(good_pt2, tmp_path / "bad.pt2", edit)
    result = subprocess.run([*edgecnn_cmd, "bench", str(bad), "--runs", "1", "--warmup", "0"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "not tensors-only" in lines[0] and "bad.pt2" in lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["use_pickle", "opaque", "guards", "sympy", "target",
                                    "legacy"])
def test_every_code_path_of_torch_export_load_is_refused(good_pt2, tmp_path, attack):
    marker = tmp_path / "PWNED"

    def edit(entries):
        if attack == "use_pickle":
            name = _entry(entries, "weights_config.json")
            config = json.loads(entries[name])
            fqn = next(iter(config["config"]))
            config["config"][fqn]["use_pickle"] = True
            entries[name] = json.dumps(config).encode()
            weight = config["config"][fqn]["path_name"]
            entries[_entry(entries, f"weights/{weight}")] = _code_pickle(str(marker))
        elif attack == "opaque":
            root = _entry(entries, "/models/").split("/")[0]
            entries[f"{root}/data/constants/opaque_obj_0"] = _code_pickle(str(marker))
        elif attack == "guards":
            _model_json(entries, lambda p: p.update(
                guards_code=[f"open({str(marker)!r}, 'w')"]))
        elif attack == "sympy":
            def change(p):
                p["graph_module"]["graph"]["sym_int_values"] = {"x": {"as_expr": {
                    "expr_str": f"__import__('builtins').open({str(marker)!r}, 'w')"}}}
            _model_json(entries, change)
        elif attack == "target":
            def change(p):
                p["graph_module"]["graph"]["nodes"][0]["target"] = "torch.hub.load"
            _model_json(entries, change)
        else:
            entries["version"] = b"1.0.0"

    bad = _rewrite(good_pt2, tmp_path / "bad.pt2", edit)
    with pytest.raises(EdgecnnError, match="bad.pt2"):
        check_archive(bad)
    with pytest.raises(EdgecnnError):
        load_pt2(bad)
    assert not marker.exists()


@pytest.mark.parametrize("damage", [b"", b"not a zip", b"PK\x03\x04" + b"\0" * 40])
def test_damaged_archives_are_one_line(tmp_path, damage):
    path = tmp_path / "x.pt2"
    path.write_bytes(damage)
    with pytest.raises(EdgecnnError, match="x.pt2"):
        load_pt2(path)


@pytest.fixture(scope="module")
def batch_fold_pt2(tmp_path_factory) -> Path:
    """A program with shape arithmetic: `x.reshape(n * 2, ...)` on the dynamic batch."""
    from user_models import BatchFold

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "fold.pt2"
    program = torch.export.export(BatchFold().eval(), (torch.rand(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    torch.export.save(program, str(path))
    return path


def test_shape_arithmetic_on_the_batch_loads(batch_fold_pt2):
    """torch.export writes n * 2 as an `_operator.mul` node and a Mul(...) expression: a
    MobileViT unfold's program loads, and runs at other batch sizes as the model does."""
    from user_models import BatchFold

    with zipfile.ZipFile(batch_fold_pt2) as z:
        nodes = json.loads(z.read(_entry(z.namelist(), "/models/")))["graph_module"]["graph"]
    assert "_operator.mul" in {n["target"] for n in nodes["nodes"]}
    program, _ = load_pt2(batch_fold_pt2)
    torch.manual_seed(0)
    model = BatchFold().eval()
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        for batch in (1, 3):
            assert torch.allclose(program.module()(x[:batch]), model(x[:batch]), atol=1e-6)


@pytest.mark.parametrize("target", ["builtins.eval", "os.system", "_operator.attrgetter",
                                    "_operator.call", "_operator.mul.__call__",
                                    "math.__builtins__", "torch.sym_max_", "torch.hub.load"])
def test_only_torchs_own_shape_arithmetic_is_allowed(batch_fold_pt2, tmp_path, target):
    """The allowed Python targets are exact names of torch's symbolic-op table
    (`safe_pt2.SYM_TARGETS`), each a pure built-in; any other name, a prefix or an
    attribute of one included, is refused before torch resolves it."""
    import torch._export.serde.serialize as serde

    from edgecnn.safe_pt2 import SYM_TARGETS

    assert SYM_TARGETS <= {f"{op.__module__}.{op.__name__}" for op in serde._SYM_OPS}

    def edit(entries):
        def change(p):
            (node,) = [n for n in p["graph_module"]["graph"]["nodes"]
                       if n["target"] == "_operator.mul"]
            node["target"] = target
        _model_json(entries, change)

    bad = _rewrite(batch_fold_pt2, tmp_path / "bad.pt2", edit)
    with pytest.raises(EdgecnnError, match=f"bad.pt2: node calls '{target}'"):
        check_archive(bad)
