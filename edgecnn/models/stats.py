"""Parameter and MAC counts for a model at an input size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecnn.models.registry import create_model


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (torch's flop counter / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(input_shape))
    return counter.get_total_flops() // 2


def model_stats(name: str, *, input_size: int = 224, num_classes: int = 1000,
                in_channels: int = 3) -> dict:
    small_input = input_size < 96
    model = create_model(name, num_classes=num_classes, in_channels=in_channels,
                         small_input=small_input)
    return {"name": name, "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, (1, in_channels, input_size, input_size)),
            "input_size": input_size, "small_input": small_input}
