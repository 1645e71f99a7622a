"""edgecnn: mobile CNNs from PyTorch to int8 ONNX and TFLite, measured.

The top-level package imports nothing heavy: `edgecnn.runtime` and the
`bench` / `validate` commands must work on a machine without torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`edgecnn.export_int8(...)`: the Python mirror of `edgecnn export --int8` (lazy: torch)."""
    if name == "export_int8":
        from edgecnn.pipeline import export_int8

        return export_int8
    raise AttributeError(f"module 'edgecnn' has no attribute {name!r}")
