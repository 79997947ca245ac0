"""Real medical image data, decoded once into uint8 arrays and cached."""

from dpmed.data.images import ImageDataset, ImageSplit, load_dataset
from dpmed.data.root import cache_dir, resolve_data_root

__all__ = ["ImageDataset", "ImageSplit", "cache_dir", "load_dataset", "resolve_data_root"]
