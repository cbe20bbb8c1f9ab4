"""A user's own folder tree: split building, its refusals, and one command through both stages."""

import json
import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE_ROOT, TINY_RUN
from ddad_bundle.cli import main as cli_main
from scripts.data.folders import split_from_folders
from scripts.data.phantoms import generate_phantom_dataset
from scripts.data.splits import SplitError, load_split


def make_tree(root, with_unlabeled=True):
    data = generate_phantom_dataset(
        root / "phantoms",
        "cxr",
        n_normal=60,
        n_validation=0,
        n_unlabeled=40,
        n_test_normal=10,
        n_test_abnormal=10,
        size=64,
        seed=1,
    )
    split = json.loads(data.read_text())
    base = data.parent
    folders = {
        "normal": [e["image"] for e in split["normal"]],
        "test/normal": [e["image"] for e in split["test"] if e["label"] == 0],
        "test/abnormal": [e["image"] for e in split["test"] if e["label"] == 1],
    }
    if with_unlabeled:
        folders["unlabeled"] = [e["image"] for e in split["unlabeled"]]
    tree = root / "mine"
    for folder, images in folders.items():
        (tree / folder).mkdir(parents=True)
        for i, rel in enumerate(images):
            # mixed formats, as a hospital export would have
            target = tree / folder / (f"{i:03d}.jpg" if i % 3 == 0 else f"{i:03d}.png")
            Image.open(base / rel).save(target)
    return tree


def test_split_from_folders_counts_and_labels(tmp_path):
    tree = make_tree(tmp_path)
    split = load_split(split_from_folders(tree, tmp_path / "out" / "split.json"), seed=0)
    counts = split.counts()
    assert counts["normal"] + counts["validation"] == 60 and counts["validation"] == 6  # val_fraction 0.1
    assert counts["unlabeled"] == 40 and "unlabeled_normal" not in counts  # folder images carry no label
    assert (counts["test_normal"], counts["test_abnormal"]) == (10, 10)
    assert sorted(e["label"] for e in split.test) == [0] * 10 + [1] * 10
    assert all(("/test/abnormal/" in e["image"]) == (e["label"] == 1) for e in split.test)


def test_missing_folder_and_empty_folder_are_named(tmp_path):
    (tmp_path / "normal").mkdir()
    with pytest.raises(SplitError, match="normal: no images found"):
        split_from_folders(tmp_path, tmp_path / "s.json")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "normal" / "a.png")
    with pytest.raises(SplitError, match="test/normal/ is missing"):
        split_from_folders(tmp_path, tmp_path / "s.json")


@pytest.mark.slow
def test_one_command_trains_both_stages_and_evaluates_a_folder_tree(tmp_path):
    tree = make_tree(tmp_path)
    settings = {k: v for k, v in TINY_RUN.items() if not k.startswith("phantom#")}
    args = [
        "fit",
        "--config_file",
        str(BUNDLE_ROOT / "configs" / "datasets" / "folder.json"),
        "--data_dir",
        str(tree),
        "--runs_dir",
        str(tmp_path / "runs"),
        "--epochs",
        "2",
    ]
    for key, value in settings.items():
        args += [f"--{key}", str(value)]
    assert cli_main(args) == 0
    metrics = json.loads((tmp_path / "runs" / "cxr_folder_ae" / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["A_rec", "A_rec_ensemble", "A_intra", "A_inter", "R_intra", "R_dual"]


def test_a_key_no_workflow_defines_is_refused_before_training(tmp_path, capsys):
    assert cli_main(["fit", "--runs_dir", str(tmp_path), "--asr_epoch", "3"]) == 2
    assert "did you mean 'asr_epochs'" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
