"""Trivial baselines on a run's test images: what a method must beat to have learned anything.

Three image statistics, each used as an anomaly score on the test set of a split, after the
bundle's own preprocessing (the modality's transforms, intensities scaled per image to [-1, 1]):

- ``mean intensity``: the image mean;
- ``intensity std``: the image standard deviation (on the Kermany chest X-rays, lower for
  pneumonia: it alone separates the classes with AUC about 0.69);
- ``L2 to mean normal``: the Euclidean distance to the mean of the training normals D_n.

AUCs are scikit-learn's ``roc_auc_score`` with the abnormal class positive; a statistic that is
lower for abnormal images gets an AUC below 0.5 (it is not flipped: flipping would choose the
direction on the test set).

Example::

    >>> trivial_baselines([common_json, dataset_json], {"split_file": "splits/x.json", "image_size": 64})
    {"mean intensity": 0.52, "intensity std": 0.69, "L2 to mean normal": 0.61}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BASELINES = ("mean intensity", "intensity std", "L2 to mean normal")


def baseline_statistics(train: np.ndarray, test: np.ndarray) -> dict:
    """{name: (N_test,)} of the three statistics; ``train`` (N, C, H, W) the D_n images."""
    return {
        "mean intensity": test.mean(axis=(1, 2, 3)),
        "intensity std": test.std(axis=(1, 2, 3)),
        "L2 to mean normal": np.sqrt(((test - train.mean(axis=0)) ** 2).sum(axis=(1, 2, 3))),
    }


def trivial_baselines(config_files, settings: dict) -> dict:
    """AUC of each baseline on the test set of the split that ``config_files`` + ``settings`` resolve to."""
    from monai.bundle import ConfigParser
    from sklearn.metrics import roc_auc_score

    from ..data.cache import cache_images
    from ..data.splits import datalist
    from ..runtime.config_guard import known_keys

    files = [str(Path(f)) for f in config_files]
    known = known_keys(files)
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({k: v for k, v in settings.items() if k.replace("::", "#") in known})
    split = parser.get_parsed_content("split")
    transform = parser.get_parsed_content("preprocessing")
    train = cache_images(datalist(split.normal), transform, "normal (D_n)").numpy()
    test = cache_images(datalist(split.test), transform, "test").numpy()
    labels = np.array([e["label"] for e in split.test])
    return {name: float(roc_auc_score(labels, v)) for name, v in baseline_statistics(train, test).items()}
