"""Verification: how far an int8 artifact is from its fp32 reference, and where.

Torch-free: it reads the artifacts and runs them on the runtimes that ship
them (onnxruntime, LiteRT). `inspect.run_inspect` is the per-layer error
analysis behind `edgecnn inspect`.
"""
