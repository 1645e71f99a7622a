"""Save the logits of artifacts on a validation set, to compare them across machines.

    python pi_dump.py --data npz:val.npz --out logits.npz [--backend auto] ART [ART ...]

Runs the same way on x86 and inside the emulated Raspberry Pi root, as a script
copied next to the artifacts (the venvs there hold only the edgecnn wheel):
torch-free, only `edgecnn.data` (for `npz:`) and `edgecnn.runtime`. The .npz holds one
float32 (N, classes) array per artifact file name, and `meta`, a JSON string
with the backend, precision and output quantization step of each artifact
(what `devtools.pi_compare` needs to judge them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def dump(artifacts: list[Path], data: str, out: Path, backend: str = "auto") -> dict:
    """Run every artifact on `data`'s validation images; write `out`; return the meta."""
    from edgecnn.data import load
    from edgecnn.runtime import open_session
    from edgecnn.runtime.machine import package_versions

    images = load(data).val_images
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, dict] = {}
    for path in artifacts:
        with open_session(path, backend=backend) as session:
            arrays[path.name] = session.predict(images).astype(np.float32)
            output = session.output
            precision = session.metadata.precision if session.metadata else (
                "int8" if session.input.is_integer else "fp32")
            meta[path.name] = {
                "backend": session.backend,
                "precision": precision,
                "output_step": float(output.quant.scale)
                if output.is_integer and output.quant is not None else None,
                "packages": package_versions(),
            }
    np.savez(out, meta=np.asarray(json.dumps(meta)), **arrays)
    return meta


def read_dump(path: Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(logits per artifact name, meta per artifact name) from a file `dump` wrote."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        return {name: npz[name] for name in meta}, meta


def main(argv: list[str] | None = None) -> int:
    """Command line entry: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python pi_dump.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data spec, e.g. npz:val.npz")
    parser.add_argument("--out", required=True, type=Path, help="the .npz to write")
    parser.add_argument("--backend", default="auto", help="as for edgecnn bench/validate")
    parser.add_argument("artifacts", nargs="+", type=Path)
    args = parser.parse_args(argv)
    meta = dump(args.artifacts, args.data, args.out, args.backend)
    for name, info in meta.items():
        print(f"{name}: {info['backend']}, {info['precision']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
