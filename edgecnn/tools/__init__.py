"""Developer and CI tools that are not part of the `edgecnn` import path.

Nothing here is imported by `edgecnn`, its CLI or its runtime; each module is
run on purpose (e.g. `python -m edgecnn.tools.pi_check`). All of it is
torch-free, so it also runs inside the emulated Raspberry Pi root.
"""
