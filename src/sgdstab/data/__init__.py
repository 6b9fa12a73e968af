"""Data sets for sgdstab: real image classification sets and synthetic regression sets.

Use :func:`load_dataset`; :data:`DEFAULT_DATASET` (``"fashion-mnist-small"``, the first 2000 training and
1000 test images of Fashion-MNIST) ships with the package and needs no download.
"""

from sgdstab.data.dataset import Dataset
from sgdstab.data.registry import DATASETS, DEFAULT_DATASET, DatasetSpec, load_dataset

__all__ = ["DATASETS", "DEFAULT_DATASET", "Dataset", "DatasetSpec", "load_dataset"]
