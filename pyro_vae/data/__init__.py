"""Data: named data sets, users' files, binarisation."""

from pyro_vae.data.binarize import binarize, prepare_split
from pyro_vae.data.datasets import DATASET_NAMES, Dataset, load_dataset

__all__ = ["DATASET_NAMES", "Dataset", "binarize", "load_dataset", "prepare_split"]
