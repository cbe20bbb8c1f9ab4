"""The benchmarks as the authors distribute them: Med-AD / MedIAnomaly-Data folders.

The papers' four data sets circulate pre-processed, one folder per data set::

    <root>/RSNA/        images/*.png   data.json
    <root>/VinCXR/      images/*.png   data.json
    <root>/BrainTumor/  images/*.jpg   data.json
    <root>/LAG/         images/*.jpg   data.json

``data.json`` is the reference implementation's split format (``{"train": {"0": [...],
"unlabeled": {"0": [...], "1": [...]}}, "test": {"0": [...], "1": [...]}}``, names relative to
``images/``), read by :func:`scripts.data.splits.read_reference_split`. The dataset configs
(``configs/datasets/<rsna|vindr|brain_tumor|lag>.json``) point ``split_file`` at
:func:`dataset_split_file`, which accepts either this layout or the ``--out`` folder of
``scripts.tools.preparation``, and the common config reads whichever file it is through
:func:`read_any_split`. D_u of a reference file is the reference code's selection, the heads of
its two unlabeled lists at the config's ``n_unlabeled`` and ``anomaly_rate`` (refused, never
shrunk, when a list is too short); with both keys null the whole lists are used. Validation is a
seeded ``val_fraction`` of D_n.

Example::

    python -m ddad_bundle fit --config_file ddad_bundle/configs/datasets/brain_tumor.json \\
        --data_dir /data/Med-AD/BrainTumor
    python -m ddad_bundle fit --split_file /data/Med-AD/LAG/data.json --image_dir /data/Med-AD/LAG/images \\
        --modality fundus --dataset lag
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .splits import SplitError, load_split, read_reference_split

REFERENCE_FILE = "data.json"
IMAGES = "images"
PREPARED_FILE = "split.json"
# the folder names of the distributed archive, per dataset config
LOG = logging.getLogger("ddad.split")
FOLDER_NAMES = {"rsna": "RSNA", "vindr": "VinCXR", "brain_tumor": "BrainTumor", "lag": "LAG"}


def is_reference_format(path) -> bool:
    """True for the reference ``data.json`` format (``train``/``test`` keys, no ``format`` key)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False  # load_split reports unreadable files with its own message
    return isinstance(data, dict) and "format" not in data and "train" in data


def read_any_split(
    split_file, image_dir=None, n_unlabeled=None, anomaly_rate=None, val_fraction: float = 0.1, seed: int = 0
):
    """A ``ddad-split/1`` file through ``load_split``, or a reference ``data.json``.

    For a reference file the image names are resolved in ``image_dir`` (default: ``images/``
    beside the file, the Med-AD layout); ``n_unlabeled`` and ``anomaly_rate`` select D_u as the
    reference code does (both or neither). A ``ddad-split/1`` file lists its D_u, so they do not
    apply there (the dataset configs set them for the Med-AD layout; a prepared ``split.json``
    in the same folder takes precedence), and the log says so.
    """
    split_file = os.path.abspath(str(split_file))
    if not is_reference_format(split_file):
        if n_unlabeled is not None or anomaly_rate is not None:
            LOG.info(
                f"{split_file} lists D_u itself: config keys n_unlabeled/anomaly_rate "
                f"({n_unlabeled}, {anomaly_rate}) apply to reference data.json files only"
            )
        return load_split(split_file, val_fraction=val_fraction, seed=seed)
    if image_dir is None:
        image_dir = os.path.join(os.path.dirname(split_file), IMAGES)
        if not os.path.isdir(image_dir):
            raise SplitError(
                f"{split_file}: a reference-format split names images relative to a folder; give "
                f"--image_dir (there is no {IMAGES}/ folder beside the file)"
            )
    elif not os.path.isdir(str(image_dir)):
        raise SplitError(
            f"config key 'image_dir' is {str(image_dir)!r}, not a folder (the images "
            f"{os.path.basename(split_file)} names)"
        )
    return read_reference_split(
        split_file, image_dir, val_fraction=val_fraction, seed=seed, n_unlabeled=n_unlabeled, anomaly_rate=anomaly_rate
    )


def dataset_split_file(data_dir, dataset: str) -> str:
    """The split file of a dataset folder: ``split.json`` (prepared) or ``data.json`` (Med-AD).

    Refused with the expected layouts when ``data_dir`` holds neither; a Med-AD root given
    instead of its data set folder is pointed to the sub-folder.
    """
    make = f"python -m scripts.tools.preparation {dataset} --source <download> --out <folder>"
    folder = Path(os.path.abspath(str(data_dir)))
    if not folder.is_dir():
        raise SplitError(
            f"config key 'data_dir' is {str(data_dir)!r}, not a folder: give --data_dir, a Med-AD "
            f"data set folder (<root>/{FOLDER_NAMES.get(dataset, '<DS>')}, holding images/ and "
            f"data.json) or the --out folder of `{make}` (docs/datasets.md)"
        )
    for name in (PREPARED_FILE, REFERENCE_FILE):
        if (folder / name).is_file():
            return str(folder / name)
    sub = FOLDER_NAMES.get(dataset)
    if sub and (folder / sub / REFERENCE_FILE).is_file():
        raise SplitError(
            f"config key 'data_dir' is the Med-AD root {folder}; give the data set's folder: --data_dir {folder / sub}"
        )
    raise SplitError(
        f"{folder}: neither {PREPARED_FILE} (from `{make}`) nor {REFERENCE_FILE} with {IMAGES}/ "
        "(a Med-AD / MedIAnomaly-Data folder); config key 'data_dir' must be one of those"
    )
