"""From split entries to cached tensors: the data path of every DDAD workflow.

Images are decoded and preprocessed once by MONAI's ``CacheDataset`` (the modality's
transform chain from the config) and stacked into one tensor (N, C, H, W), so a training epoch
only indexes memory and decodes nothing. Test and inference data keep per-image metadata
(file name, label, mask) and go through a regular MONAI ``DataLoader``.

Example::

    >>> split = load_split("runs/data/cxr/split.json")
    >>> normals = cache_images(datalist(split.normal), preprocessing, "normal (D_n)")
    >>> normals.shape
    torch.Size([360, 1, 64, 64])
"""

from __future__ import annotations

import logging

import torch
from monai.data import CacheDataset, DataLoader

logger = logging.getLogger("ddad")


def root_cause(error: BaseException) -> BaseException:
    """The error under MONAI's 'applying transform ...' wrappers (it names the file and the problem)."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def cached_dataset(entries: list[dict], transform, name: str, num_workers: int = 0) -> CacheDataset:
    """A fully cached MONAI dataset; refuses an empty pool, and names the file that fails to load."""
    if not entries:
        raise ValueError(f"the {name} pool is empty: the split file lists no images for it")
    try:
        return CacheDataset(entries, transform, cache_rate=1.0, num_workers=num_workers, progress=False)
    except Exception as error:  # re-raised with the message that names the file
        raise ValueError(f"the {name} pool: {root_cause(error)}") from error


def cache_images(entries: list[dict], transform, name: str, num_workers: int = 0) -> torch.Tensor:
    """Decode and preprocess every image once; returns a float32 tensor (N, C, H, W)."""
    return stack_images(cached_dataset(entries, transform, name, num_workers), name)


def stack_images(dataset, name: str) -> torch.Tensor:
    """A cached dataset's images as one float32 tensor (N, C, H, W), all of one shape."""
    images = [torch.as_tensor(dataset[i]["image"]).float() for i in range(len(dataset))]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"the {name} pool has images of different shapes after preprocessing: {sorted(shapes)}")
    logger.info("cached %d images of the %s pool, shape %s", len(images), name, images[0].shape)
    return torch.stack(images).contiguous()


def join_pools(*pools: torch.Tensor | None) -> torch.Tensor:
    """Concatenate cached pools (D_n and D_u for the UDM), skipping absent ones."""
    present = [p for p in pools if p is not None and len(p)]
    return torch.cat(present) if len(present) > 1 else present[0]


def evaluation_loader(entries: list[dict], transform, name: str, batch_size: int = 64, num_workers: int = 0):
    """A MONAI DataLoader over cached test images, keeping file names, labels and masks."""
    dataset = cached_dataset(entries, transform, name, num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def for_modality(transforms: dict, modality: str):
    """The preprocessing chain of ``modality`` (config key ``modality``), refusing unknown names."""
    if modality not in transforms:
        raise ValueError(
            f"unknown modality {modality!r} (config key 'modality'); choose one of {', '.join(transforms)}"
        )
    return transforms[modality]
