"""The one network shape every zoo family shares: stem, blocks, head conv, classifier."""

from __future__ import annotations

import torch
from torch import nn

from edgecnn.models.blocks import ClassifierHead, ConvBnAct, LayerFn, init_weights
from edgecnn.models.padding import apply_padding, set_batchnorm_eps


def input_strides(strides: list[int], small_input: bool) -> tuple[int, list[int]]:
    """Stem stride and per-stage strides for the input mode.

    224-px mode keeps the published strides (stem 2). Small-input mode (28-32 px)
    uses stem stride 1 and turns the first stride-2 stage into stride 1, so a
    32-px image ends as a 4x4 feature map instead of 1x1.
    """
    if not small_input:
        return 2, list(strides)
    strides = list(strides)
    strides[strides.index(2)] = 1
    return 1, strides


class MobileNet(nn.Module):
    """stem -> blocks -> optional 1x1 head conv -> global pool -> [linear + activation]
    -> dropout -> linear.

    `padding` ("symmetric" | "tf_same", `edgecnn.models.padding`) and `bn_eps` (every
    BatchNorm's epsilon: PyTorch's 1e-5, TensorFlow's 1e-3) follow the weights a model
    is meant to carry.
    """

    def __init__(self, blocks: list[nn.Module], *, in_channels: int, stem_chs: int,
                 stem_stride: int, num_classes: int, head_chs: int | None = None,
                 block_out_chs: int, act_layer: LayerFn = nn.ReLU6,
                 drop_rate: float = 0.0, head_hidden_chs: int | None = None,
                 padding: str = "symmetric", bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.stem = ConvBnAct(in_channels, stem_chs, 3, stem_stride, act_layer=act_layer)
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = (ConvBnAct(block_out_chs, head_chs, 1, act_layer=act_layer)
                          if head_chs else nn.Identity())
        self.num_features = head_chs or block_out_chs
        self.classifier = ClassifierHead(self.num_features, num_classes, drop_rate,
                                         head_hidden_chs, act_layer)
        init_weights(self)
        apply_padding(self, padding)
        set_batchnorm_eps(self, bn_eps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.blocks(x)
        return self.conv_head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
