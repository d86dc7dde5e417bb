"""Data: named data sets, users' files, binarisation and dequantisation."""

from pyro_vae.data.datasets import DATASET_NAMES, Dataset, load_dataset
from pyro_vae.data.transforms import binarize, dequantize, minibatch_transform, prepare_split

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "binarize",
    "dequantize",
    "load_dataset",
    "minibatch_transform",
    "prepare_split",
]
