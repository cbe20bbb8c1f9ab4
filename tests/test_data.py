"""From split entries to cached tensors: decoding once, shapes, and errors that name the file."""

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, Resized
from PIL import Image

from scripts.data.cache import cache_images, cached_dataset, for_modality, join_pools
from scripts.data.readers import LoadMaskd, LoadMedicalImaged, ScaleToSymmetricRanged


def chain(size=16):
    return Compose(
        [
            LoadMedicalImaged(keys=["image"]),
            LoadMaskd(keys=["mask"], allow_missing_keys=True),
            Resized(
                keys=["image", "mask"], spatial_size=(size, size), mode=["area", "nearest"], allow_missing_keys=True
            ),
            ScaleToSymmetricRanged(keys=["image"]),
        ]
    )


def write_pngs(folder, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_pool_is_decoded_into_one_tensor(tmp_path):
    entries = [{"image": p} for p in write_pngs(tmp_path, 5)]
    images = cache_images(entries, chain(), "normal (D_n)")
    assert images.shape == (5, 1, 16, 16) and images.dtype == torch.float32
    assert images.amin() >= -1 and images.amax() <= 1


def test_empty_pool_is_named():
    with pytest.raises(ValueError, match="unlabeled \\(D_u\\) pool is empty"):
        cache_images([], chain(), "unlabeled (D_u)")


def test_corrupt_image_in_a_pool_names_the_file(tmp_path):
    entries = [{"image": p} for p in write_pngs(tmp_path, 2)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(Exception, match="bad.png"):
        cache_images(entries + [{"image": str(bad)}], chain(), "normal (D_n)")


def test_udm_pool_joins_normal_and_unlabeled():
    a, b = torch.zeros(3, 1, 4, 4), torch.ones(2, 1, 4, 4)
    assert join_pools(a, b).shape[0] == 5
    assert join_pools(a, None) is a


def test_test_loader_keeps_labels_masks_and_file_names(tmp_path):
    paths = write_pngs(tmp_path, 3)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 12)).save(mask)
    entries = [{"image": p, "label": i % 2, "mask": str(mask)} for i, p in enumerate(paths)]
    batch = next(iter(DataLoader(cached_dataset(entries, chain(), "test"), batch_size=3)))
    assert batch["image"].shape == (3, 1, 16, 16) and batch["mask"].shape == (3, 1, 16, 16)
    assert batch["label"].tolist() == [0, 1, 0]
    assert set(torch.unique(batch["mask"]).tolist()) == {0.0, 1.0}
    assert [str(f) for f in batch["image"].meta["filename_or_obj"]] == paths


def test_modality_choice_names_the_key():
    with pytest.raises(ValueError, match="modality"):
        for_modality({"cxr": 1}, "ct")
