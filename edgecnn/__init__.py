"""edgecnn: mobile CNNs from PyTorch to int8 ONNX and TFLite, measured.

The top-level package imports nothing heavy: `edgecnn.runtime` and the
`bench` / `validate` commands must work on a machine without torch.
"""

__version__ = "0.1.0"
