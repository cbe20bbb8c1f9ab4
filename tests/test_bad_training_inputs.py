"""The catalogue of bad training data: every case is refused by `fit` before stage 1 trains.

Each case is a real folder tree or split file (PNG files written with PIL) given to
``python -m ddad_bundle fit`` in process. The assertions are the exact outcome a user sees: exit
status 2, one ``error:`` line that names the file (or folder, or key) and the problem, and no
checkpoint in the run folder, because the data are read and checked before any training.
``docs/bad_inputs.md`` lists the same cases; the configuration cases (typo'd key, wrong types and
ranges, K = 1) are in tests/test_config_values.py and tests/test_folders.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BUNDLE_ROOT
from ddad_bundle.cli import main as cli_main
from scripts.data.folders import split_from_folders

FOLDER_CONFIG = str(BUNDLE_ROOT / "configs" / "datasets" / "folder.json")
SIZES = {"normal": 10, "unlabeled": 4, "test/normal": 3, "test/abnormal": 3}
QUICK = ["--epochs", "1", "--image_size", "16", "--progress_bar", "false"]


def write_tree(root: Path, sizes=SIZES) -> Path:
    """A folder data set of random 32 px grayscale PNGs (layout of scripts.data.folders)."""
    rng = np.random.default_rng(0)
    for folder, n in sizes.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / folder / f"{i}.png")
    return root


def fit(capsys, runs_dir: Path, *args) -> tuple[int, str]:
    """(exit status, the error lines on stderr) of one `fit` run."""
    code = cli_main(["fit", "--runs_dir", str(runs_dir), *QUICK, *map(str, args)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return code, "\n".join(errors)


def checkpoints(runs_dir: Path) -> list[Path]:
    return sorted(runs_dir.rglob("*.pt")) if runs_dir.exists() else []


def assert_refused(code, errors, runs_dir, *expected):
    assert code == 2
    assert len(errors.splitlines()) == 1, errors
    for text in expected:
        assert text in errors, f"{text!r} not in {errors!r}"
    assert checkpoints(runs_dir) == []


# ------------------------------------------------------------------------------------------------
# folder data sets (configs/datasets/folder.json)


def test_empty_normal_folder_is_named(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree", {**SIZES, "normal": 0})
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tree)
    assert_refused(code, errors, tmp_path / "runs", f"{tree / 'normal'}: no images found", ".png")


def test_a_folder_without_images_of_a_supported_format_is_named(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree", {**SIZES, "test/abnormal": 0})
    (tree / "test" / "abnormal" / "notes.txt").write_text("not an image")
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tree)
    assert_refused(code, errors, tmp_path / "runs", f"{tree / 'test' / 'abnormal'}: no images found")


def test_missing_test_abnormal_folder_is_named_with_the_layout(tmp_path, capsys):
    tree = write_tree(tmp_path / "tree", {k: v for k, v in SIZES.items() if k != "test/abnormal"})
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tree)
    assert_refused(code, errors, tmp_path / "runs", "the folder test/abnormal/ is missing", "normal/, test/normal/")


def test_data_dir_that_is_not_a_folder_names_the_key(tmp_path, capsys):
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tmp_path / "nowhere")
    assert_refused(code, errors, tmp_path / "runs", "nowhere: not a folder (config key 'data_dir')")


@pytest.mark.parametrize(
    "content, problem",
    [(b"\x89PNG\r\n\x1a\n" + b"not really" * 5, "cannot decode image"), (b"", "file is empty (0 bytes)")],
    ids=["corrupt", "empty"],
)
def test_a_corrupt_image_inside_normal_is_named_before_training(tmp_path, capsys, content, problem):
    tree = write_tree(tmp_path / "tree")
    bad = tree / "normal" / "3.png"
    bad.write_bytes(content)
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tree)
    assert_refused(code, errors, tmp_path / "runs", f"{bad}: {problem}")


def test_too_few_normals_for_a_validation_set_is_refused_before_stage_1(tmp_path, capsys):
    # 8 normals: val_fraction 0.1 holds out one image, too few to select the ASR-Net on. Before,
    # stage 1 trained for nothing and stage 2 stopped on it.
    tree = write_tree(tmp_path / "tree", {**SIZES, "normal": 8})
    code, errors = fit(capsys, tmp_path / "runs", "--config_file", FOLDER_CONFIG, "--data_dir", tree)
    assert_refused(code, errors, tmp_path / "runs", "the validation set holds 1 image(s)", "'val_fraction'")
    code, _ = fit(
        capsys, tmp_path / "runs2", "--config_file", FOLDER_CONFIG, "--data_dir", tree, "--val_fraction", 0.25
    )
    assert code == 0  # two held-out normals are enough: the message's advice works
    assert (tmp_path / "runs2" / "cxr_folder_ae" / "eval" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------------
# split files (--split_file)


@pytest.fixture
def split_file(tmp_path) -> Path:
    """A valid ddad-split/1 file over real images (made from a folder tree)."""
    return Path(split_from_folders(write_tree(tmp_path / "tree"), tmp_path / "split.json"))


def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_a_split_listing_a_missing_file_names_entry_and_path(tmp_path, capsys, split_file):
    gone = tmp_path / "tree" / "normal" / "gone.png"
    edit(split_file, lambda d: d["normal"].append({"image": str(gone)}))
    code, errors = fit(capsys, tmp_path / "runs", "--split_file", split_file)
    assert_refused(
        code, errors, tmp_path / "runs", str(split_file), "'normal' entry 10", f"{gone}, which does not exist"
    )


def test_a_split_listing_an_image_twice_names_both_entries(tmp_path, capsys, split_file):
    edit(split_file, lambda d: d["test"].append({"image": d["normal"][2]["image"], "label": 0}))
    code, errors = fit(capsys, tmp_path / "runs", "--split_file", split_file)
    assert_refused(code, errors, tmp_path / "runs", "listed twice", "'normal' entry 2 and 'test' entry 6")


def test_a_split_that_is_not_valid_json_names_line_and_column(tmp_path, capsys, split_file):
    split_file.write_text(split_file.read_text()[:-3])
    code, errors = fit(capsys, tmp_path / "runs", "--split_file", split_file)
    assert_refused(code, errors, tmp_path / "runs", f"{split_file}: not valid JSON (line")


def test_a_split_file_that_does_not_exist_is_named(tmp_path, capsys):
    code, errors = fit(capsys, tmp_path / "runs", "--split_file", tmp_path / "nope.json")
    assert_refused(code, errors, tmp_path / "runs", "nope.json: no such file")


def test_a_test_entry_without_a_label_is_named(tmp_path, capsys, split_file):
    edit(split_file, lambda d: d["test"][0].pop("label"))
    code, errors = fit(capsys, tmp_path / "runs", "--split_file", split_file)
    assert_refused(code, errors, tmp_path / "runs", "'test' entry 0", "test entries need a 'label'")


def test_an_infeasible_anomaly_rate_names_the_pool_it_exceeds(tmp_path, capsys):
    # the Med-AD layout: data.json naming images in images/; D_u is drawn at n_unlabeled and
    # anomaly_rate; a pool of 10 abnormal images cannot give 12 D_u images at rate 1.0.
    names = {
        key: [f"{key.replace('/', '_')}_{i}.png" for i in range(n)]
        for key, n in (("train/0", 20), ("u/0", 6), ("u/1", 10), ("test/0", 4), ("test/1", 4))
    }
    images = tmp_path / "medad" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in sum(names.values(), []):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(images / name)
    data = {
        "train": {"0": names["train/0"], "unlabeled": {"0": names["u/0"], "1": names["u/1"]}},
        "test": {"0": names["test/0"], "1": names["test/1"]},
    }
    (tmp_path / "medad" / "data.json").write_text(json.dumps(data))
    args = ["--split_file", tmp_path / "medad" / "data.json", "--n_unlabeled", 12, "--anomaly_rate", 1.0]
    code, errors = fit(capsys, tmp_path / "runs", *args)
    assert_refused(code, errors, tmp_path / "runs", "needs 12 names from 'train/unlabeled/1', which lists 10")
