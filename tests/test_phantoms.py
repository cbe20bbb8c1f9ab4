"""Phantom data: seeded and byte-reproducible, exact anomaly rates, masks that mark what the anomaly changed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.data.phantoms import MODALITIES, generate_phantom_dataset, main, render_phantom

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "ddad_bundle"
SMALL = dict(n_normal=4, n_validation=2, n_unlabeled=5, anomaly_rate=0.6, n_test_normal=3, n_test_abnormal=3, size=32)


def _files(root):
    """Every file under root, relative path -> bytes."""
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _load(split_path):
    return json.loads(split_path.read_text())


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = generate_phantom_dataset(tmp_path / "a", "cxr", seed=3, **SMALL).parent
    b = generate_phantom_dataset(tmp_path / "b", "cxr", seed=3, **SMALL).parent
    c = generate_phantom_dataset(tmp_path / "c", "cxr", seed=4, **SMALL).parent
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    images = [k for k in fa if k.startswith("images/")]
    assert len(images) == 4 + 2 + 5 + 6
    assert all(fa[k] != fc[k] for k in images)


def test_an_image_does_not_depend_on_how_many_others_are_made(tmp_path):
    small = generate_phantom_dataset(tmp_path / "s", "brain", seed=1, **SMALL).parent
    big = generate_phantom_dataset(
        tmp_path / "b", "brain", seed=1, **{**SMALL, "n_normal": 9, "n_validation": 0}
    ).parent
    for i in range(4):
        name = f"images/normal_{i:05d}.png"
        assert (small / name).read_bytes() == (big / name).read_bytes()


def test_split_counts_exact_anomaly_rate_and_shuffled_labels(tmp_path):
    split_path = generate_phantom_dataset(
        tmp_path,
        "fundus",
        n_normal=6,
        n_validation=3,
        n_unlabeled=40,
        anomaly_rate=0.35,
        n_test_normal=12,
        n_test_abnormal=8,
        size=16,
        seed=2,
    )
    split = _load(split_path)
    assert split["format"] == "ddad-split/1" and split["seed"] == 2 and split["anomaly_rate"] == 0.35
    assert [len(split[k]) for k in ("normal", "validation", "unlabeled", "test")] == [6, 3, 40, 20]
    unl = [e["label"] for e in split["unlabeled"]]
    assert sum(unl) == 14  # exactly 0.35 * 40
    test = [e["label"] for e in split["test"]]
    assert sum(test) == 8 and len(test) - sum(test) == 12
    for labels in (unl, test):
        assert labels not in (sorted(labels), sorted(labels, reverse=True))
    entries = [e for k in ("normal", "validation", "unlabeled", "test") for e in split[k]]
    ids = [e["patient_id"] for e in entries]
    assert len(set(ids)) == len(ids)
    for e in entries:
        assert not e["image"].startswith("/") and (tmp_path / e["image"]).is_file()
    for e in split["test"]:
        assert e["mask"] == e["image"].replace("images/", "masks/")
    assert (tmp_path / "README.txt").read_text().count("\n") == 1


@pytest.mark.parametrize("modality", MODALITIES)
def test_masks_are_non_empty_exactly_for_abnormal_test_images(tmp_path, modality):
    split_path = generate_phantom_dataset(tmp_path, modality, seed=5, **{**SMALL, "size": 64})
    for e in _load(split_path)["test"]:
        image = np.asarray(Image.open(tmp_path / e["image"]))
        mask = np.asarray(Image.open(tmp_path / e["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == image.shape == (64, 64)
        assert set(np.unique(mask)) <= {0, 255}
        assert mask.any() == bool(e["label"])


@pytest.mark.parametrize("modality", MODALITIES)
def test_anomaly_changes_the_image_inside_its_mask(modality):
    """Same generator state, with and without anomaly: the difference sits inside the mask and is not subtle."""
    for i in range(8):
        abnormal, mask = render_phantom(modality, np.random.default_rng([7, i]), 64, abnormal=True)
        normal, empty = render_phantom(modality, np.random.default_rng([7, i]), 64, abnormal=False)
        assert abnormal.dtype == np.float32 and abnormal.shape == (64, 64)
        assert 0.0 <= abnormal.min() and abnormal.max() <= 1.0
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and not empty.any()
        inside = mask.astype(bool)
        assert 3 <= inside.sum() < 0.3 * inside.size
        assert not (inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any())
        diff = np.abs(abnormal - normal)
        assert diff[inside].mean() > 0.06  # visible at 64x64
        assert diff[inside].mean() > 10 * diff[~inside].mean()
        assert diff[inside].sum() > 0.4 * diff.sum()


def test_fundus_masks_lie_in_the_field_of_view():
    y, x = np.mgrid[:64, :64]
    outside = np.hypot(x - 31.5, y - 31.5) > 0.99 * 32
    for i in range(10):
        image, mask = render_phantom("fundus", np.random.default_rng([8, i]), 64, abnormal=True)
        assert not mask[outside].any()
        assert image[outside].mean() < 0.05  # black surround


def test_rgb_fundus_has_three_colour_channels(tmp_path):
    image, _ = render_phantom("fundus", np.random.default_rng(0), 48, rgb=True)
    gray, _ = render_phantom("fundus", np.random.default_rng(0), 48)
    assert image.shape == (48, 48, 3) and gray.shape == (48, 48)
    centre = image[16:32, 16:32]
    assert centre[..., 0].mean() > centre[..., 1].mean() > centre[..., 2].mean()  # reddish-orange retina
    split = _load(generate_phantom_dataset(tmp_path, "fundus", rgb=True, seed=0, **SMALL))
    assert Image.open(tmp_path / split["normal"][0]["image"]).mode == "RGB"
    assert Image.open(tmp_path / split["test"][0]["mask"]).mode == "L"
    with pytest.raises(ValueError, match="rgb"):
        render_phantom("cxr", np.random.default_rng(0), rgb=True)


def test_infeasible_anomaly_rate_is_refused_naming_the_numbers(tmp_path):
    with pytest.raises(ValueError) as err:
        generate_phantom_dataset(tmp_path / "x", n_unlabeled=7, anomaly_rate=0.5)
    message = str(err.value)
    assert "anomaly_rate=0.5" in message and "n_unlabeled=7" in message and "3.5" in message
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="anomaly_rate"):
        generate_phantom_dataset(tmp_path / "x", anomaly_rate=1.5)


@pytest.mark.parametrize("name", ["n_normal", "n_validation", "n_unlabeled", "n_test_normal", "n_test_abnormal"])
def test_negative_counts_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match=name):
        generate_phantom_dataset(tmp_path, **{name: -1})


def test_unknown_modality_is_refused_listing_the_valid_ones(tmp_path):
    for call in (
        lambda: render_phantom("ct", np.random.default_rng(0)),
        lambda: generate_phantom_dataset(tmp_path, modality="ct"),
    ):
        with pytest.raises(ValueError, match="modality must be one of cxr, brain, fundus; got 'ct'"):
            call()


def test_generation_is_idempotent_and_regenerates_on_new_parameters(tmp_path):
    split_path = generate_phantom_dataset(tmp_path, "cxr", seed=0, **SMALL)
    stamp = split_path.stat().st_mtime_ns
    assert generate_phantom_dataset(tmp_path, "cxr", seed=0, **SMALL) == split_path
    assert split_path.stat().st_mtime_ns == stamp
    generate_phantom_dataset(tmp_path, "cxr", seed=0, **{**SMALL, "n_normal": 2})
    split = _load(split_path)
    assert split["generator"]["n_normal"] == 2 and len(split["normal"]) == 2
    assert sorted(f.name for f in (tmp_path / "images").glob("normal_*")) == ["normal_00000.png", "normal_00001.png"]
    (tmp_path / "images" / "normal_00001.png").unlink()  # damaged folder: made again
    generate_phantom_dataset(tmp_path, "cxr", seed=0, **{**SMALL, "n_normal": 2})
    assert (tmp_path / "images" / "normal_00001.png").is_file()


def test_refuses_to_overwrite_a_foreign_split(tmp_path):
    (tmp_path / "split.json").write_text('{"format": "ddad-split/1"}')
    with pytest.raises(ValueError, match="not written by the phantom generator"):
        generate_phantom_dataset(tmp_path, **SMALL)


def test_two_hundred_images_at_64_are_all_written(tmp_path):
    # Generation speed is reported by benchmarks, not asserted here: a timed assertion fails on a loaded machine.
    generate_phantom_dataset(
        tmp_path,
        "fundus",
        n_normal=80,
        n_validation=10,
        n_unlabeled=60,
        anomaly_rate=0.5,
        n_test_normal=25,
        n_test_abnormal=25,
        size=64,
        seed=0,
    )
    assert len(list((tmp_path / "images").iterdir())) == 200


def test_command_line(tmp_path, capsys):
    main(
        [
            "--modality",
            "brain",
            "--out",
            str(tmp_path / "m"),
            "--seed",
            "1",
            "--size",
            "16",
            "--n-normal",
            "2",
            "--n-validation",
            "1",
            "--n-unlabeled",
            "2",
            "--anomaly-rate",
            "0.5",
            "--n-test-normal",
            "1",
            "--n-test-abnormal",
            "1",
        ]
    )
    assert capsys.readouterr().out.strip() == str(tmp_path / "m" / "split.json")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.data.phantoms",
            "--out",
            str(tmp_path / "c"),
            "--size",
            "16",
            "--n-normal",
            "1",
            "--n-validation",
            "0",
            "--n-unlabeled",
            "3",
            "--n-test-normal",
            "1",
            "--n-test-abnormal",
            "0",
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "anomaly_rate=0.6 with n_unlabeled=3" in done.stderr
