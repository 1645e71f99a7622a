"""Exporters: PyTorch to ONNX, ONNX to TFLite."""
