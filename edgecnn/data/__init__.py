"""Datasets from a spec string; nothing is ever downloaded.

`load("digits")`, `load("mnist:DIR")`, `load("cifar10:DIR")`,
`load("imagefolder:DIR")`, `load("npz:FILE")` return a `Dataset` of uint8
NHWC images. This package is torch-free: `edgecnn validate` uses it on devices.
"""

from edgecnn.data import readers as _readers  # noqa: F401  (registers the readers)
from edgecnn.data.dataset import Dataset, check_spec, load, sources
from edgecnn.data.readers import save_npz

__all__ = ["Dataset", "check_spec", "load", "save_npz", "sources"]
