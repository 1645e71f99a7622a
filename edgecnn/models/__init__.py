"""The model zoo: mobile CNN families registered by name (see `models`)."""

from edgecnn.models import (  # noqa: F401
    dsc_net,
    efficientnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
)
from edgecnn.models.blocks import (
    DepthwiseSeparable,
    InvertedResidual,
    MBConv,
    SqueezeExcite,
    make_divisible,
)
from edgecnn.models.registry import create_model, models, register_model

__all__ = ["DepthwiseSeparable", "InvertedResidual", "MBConv", "SqueezeExcite", "create_model",
           "make_divisible", "models", "register_model"]
