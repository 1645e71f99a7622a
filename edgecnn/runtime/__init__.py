"""Torch-free runtime: sessions over onnxruntime / LiteRT / tflite-runtime, bench, validate.

Importing this package pulls only numpy: each runtime is imported when an
artifact is opened, and torch only for `.pt2` programs.
"""

from edgecnn.runtime.metadata import read_metadata
from edgecnn.runtime.session import Session, installed_backends, open_session

__all__ = ["Session", "installed_backends", "open_session", "read_metadata"]
