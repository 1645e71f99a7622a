import pytest
import torch
from torch import nn

from edgecnn.errors import EdgecnnError
from edgecnn.models import InvertedResidual, MBConv, create_model, make_divisible, models
from edgecnn.models.stats import model_stats

# Published parameter counts at width 1.0, 1000 classes, 224 px.
PUBLISHED_PARAMS = {"mobilenet_v1": 4.2e6, "mobilenet_v2": 3.5e6, "efficientnet_b0": 5.3e6,
                    "efficientnet_lite0": 4.7e6, "mobilenet_v3_large": 5.48e6,
                    "mobilenet_v3_small": 2.54e6}


@pytest.mark.parametrize("name", list(models))
@pytest.mark.parametrize("small_input,size", [(False, 224), (True, 32), (True, 28)])
def test_every_model_runs_forward_in_both_input_modes(name, small_input, size):
    model = create_model(name, num_classes=7, in_channels=1, small_input=small_input).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(name):
    params = sum(p.numel() for p in create_model(name).parameters())
    assert abs(params - PUBLISHED_PARAMS[name]) / PUBLISHED_PARAMS[name] <= 0.02


def test_macs_at_224_match_published_mobilenet_v2():
    # MobileNetV2 paper: 300M multiply-adds at 224 px, width 1.0.
    stats = model_stats("mobilenet_v2", input_size=224)
    assert 295e6 <= stats["macs"] <= 305e6


def test_small_input_mode_keeps_a_4x4_map_at_32_px():
    model = create_model("mobilenet_v2", small_input=True).eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
        assert create_model("mobilenet_v2").eval().forward_features(
            torch.zeros(1, 3, 224, 224)).shape[-2:] == (7, 7)


def test_width_mult_rounds_channels_to_multiples_of_8():
    model = create_model("mobilenet_v2", width_mult=0.35)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels != 1000:
            assert m.out_channels % 8 == 0, m
    assert make_divisible(32 * 0.35) == 16 and make_divisible(10) == 16


def test_inverted_residual_skips_expansion_at_ratio_1_and_residual_only_when_shapes_match():
    block = InvertedResidual(16, 16, stride=1, expand_ratio=1)
    assert isinstance(block.conv_pw, nn.Identity) and block.has_residual
    assert not InvertedResidual(16, 24, stride=1).has_residual
    assert not InvertedResidual(16, 16, stride=2).has_residual
    assert isinstance(block.act2, nn.ReLU6)


def test_mbconv_has_squeeze_excite_on_input_channels_and_silu():
    block = MBConv(40, 40, kernel_size=5)
    assert block.conv_dw.kernel_size == (5, 5)
    assert block.se.conv_reduce.out_channels == 10  # 0.25 x input channels
    assert isinstance(block.act1, nn.SiLU) and isinstance(block.se.gate, nn.Sigmoid)


def test_convs_use_kaiming_fan_out_init():
    torch.manual_seed(0)
    conv = create_model("mobilenet_v1").stem.conv
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert abs(float(conv.weight.detach().std()) - (2 / fan_out) ** 0.5) < 0.02


def test_custom_factory_by_module_path():
    model = create_model("torch.nn:Identity", num_classes=3)
    assert isinstance(model, nn.Identity)


def test_unknown_model_lists_known_ones():
    with pytest.raises(EdgecnnError, match="known: dsc_net, efficientnet_b0"):
        create_model("resnet9000")
    with pytest.raises(EdgecnnError, match="cannot import module"):
        create_model("no_such_pkg.mod:factory")


def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    """`module:factory` with the module in the current directory (not on sys.path) is
    imported from there, as `python -m` and uvicorn do, and the directory stays importable
    for the module's own later imports; a module found nowhere says where it was looked
    for; one found on sys.path leaves sys.path as it was."""
    import sys

    from edgecnn.models.registry import resolve_factory

    (tmp_path / "cwd_model_a1.py").write_text(
        "from torch import nn\n\ndef net(num_classes=10):\n    return nn.Linear(4, num_classes)\n")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    with pytest.raises(EdgecnnError, match=r"^cannot import module 'cwd_missing_b2' for model "
                                           r"'cwd_missing_b2:net': No module named "
                                           r"'cwd_missing_b2' \(looked in the current "
                                           r"directory and the Python path\)$"):
        resolve_factory("cwd_missing_b2:net")
    assert sys.path == before
    resolve_factory("torch.nn:Identity")
    assert sys.path == before
    assert isinstance(create_model("cwd_model_a1:net", num_classes=3), nn.Linear)
    assert sys.path == [str(tmp_path), *before]
    monkeypatch.delitem(sys.modules, "cwd_model_a1")


def test_the_console_script_imports_from_the_current_directory(tmp_path):
    """The `edgecnn` console script's sys.path starts at its own directory, not the current
    one: `edgecnn export --int8 mymodule:net` run beside mymodule.py once said it could
    not import it."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("edgecnn", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no edgecnn console script beside this interpreter")
    (tmp_path / "cwd_model_c3.py").write_text(
        "def net(num_classes=10, in_channels=1):\n    raise RuntimeError('built in cwd')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    for spec, error in (("cwd_model_c3:net", "RuntimeError: built in cwd"),
                        ("cwd_missing_d4:net", "looked in the current directory")):
        result = subprocess.run([script, "export", "--int8", spec, "--data", "digits",
                                 "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and error in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("source, error", [
    ("def net(:\n    pass\n", r"SyntaxError: .*\(broken_\d+\.py, line 1\)"),
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("import no_such_package_xyz\n", "No module named 'no_such_package_xyz'"),
])
def test_a_user_module_that_fails_on_import_is_one_error(source, error, tmp_path, monkeypatch):
    """The user's module runs when imported: whatever it raises (a syntax error was a
    traceback) is one EdgecnnError naming the module and the model."""
    name = f"broken_{abs(hash(source)) % 10**6}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EdgecnnError, match=rf"^cannot import module '{name}' for model "
                                           rf"'{name}:net': .*{error}"):
        create_model(f"{name}:net")
