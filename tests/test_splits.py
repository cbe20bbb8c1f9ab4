"""Split files: drawing (exact sizes and AR, seeded, patient-disjoint), refusals, save/load round trip,
validation holdout, and the reference implementation's format (synthetic and, when present, the
official files in ../shared/splits)."""

import json
import shutil
from pathlib import Path

import pytest

from scripts.data.splits import (
    Split,
    SplitError,
    build_split,
    datalist,
    hold_out_validation,
    load_split,
    read_reference_split,
    save_split,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "splits"
SETS = ("normal", "validation", "unlabeled", "test")


def _pools(root: Path, n_normal=60, n_abnormal=40, per_patient=1, touch=False):
    """Labeled pools of (optionally existing) files; per_patient > 1 repeats patient ids."""

    def make(prefix, n):
        out = []
        for i in range(n):
            path = root / "images" / f"{prefix}_{i:04d}.png"
            if touch:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"")
            out.append({"image": str(path), "patient_id": f"{prefix}{i // per_patient}"})
        return out

    return make("n", n_normal), make("a", n_abnormal)


def _images(d, name):
    return [e["image"] for e in d.get(name, [])]


def _assert_disjoint(d):
    seen = {}
    for name in SETS:
        for image in _images(d, name):
            assert image not in seen, f"{image} in {seen.get(image)} and {name}"
            seen[image] = name


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _split_dict(**override):
    d = {
        "format": "ddad-split/1",
        "normal": [{"image": f"images/n_{i}.png", "patient_id": f"n{i}"} for i in range(10)],
        "unlabeled": [{"image": "images/u_0.png", "label": 1}, {"image": "images/u_1.png", "label": 0}],
        "test": [{"image": "images/t_0.png", "label": 0}, {"image": "images/t_1.png", "label": 1}],
    }
    d.update(override)
    return d


def _touch_all(folder: Path, d):
    for name in SETS:
        for e in d.get(name, []):
            p = folder / e["image"]
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")


# ------------------------------------------------------------------------------------------------
# build_split


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.6, 1.0])
def test_build_exact_counts_and_rate(tmp_path, rate):
    normals, abnormals = _pools(tmp_path)
    d = build_split(
        normals,
        abnormals,
        n_normal=20,
        n_unlabeled=10,
        anomaly_rate=rate,
        n_test_normal=8,
        n_test_abnormal=7,
        n_validation=5,
        seed=3,
    )
    assert (len(d["normal"]), len(d["validation"]), len(d["unlabeled"])) == (20, 5, 10)
    assert sum(e["label"] for e in d["unlabeled"]) == round(rate * 10)
    assert [e["label"] for e in d["test"]].count(0) == 8 and [e["label"] for e in d["test"]].count(1) == 7
    assert d["anomaly_rate"] == rate and d["seed"] == 3 and d["format"] == "ddad-split/1"
    _assert_disjoint(d)
    # roles follow the pools: nothing from the abnormal pool lands in a normal set
    abnormal = {e["image"] for e in abnormals}
    assert not abnormal & set(_images(d, "normal") + _images(d, "validation"))


def test_build_seeded_and_order_independent(tmp_path):
    normals, abnormals = _pools(tmp_path)
    kw = dict(n_normal=20, n_unlabeled=10, anomaly_rate=0.6, n_test_normal=8, n_test_abnormal=8)
    a = build_split(normals, abnormals, seed=1, **kw)
    assert a == build_split(normals, abnormals, seed=1, **kw)
    assert a == build_split(normals[::-1], abnormals[::-1], seed=1, **kw)
    assert a["normal"] != build_split(normals, abnormals, seed=2, **kw)["normal"]


def test_build_patient_disjoint(tmp_path):
    # 3 images per patient: sizes not multiples of 3 force partially used patients
    normals, abnormals = _pools(tmp_path, n_normal=90, n_abnormal=60, per_patient=3)
    for seed in range(5):
        d = build_split(
            normals,
            abnormals,
            n_normal=31,
            n_unlabeled=20,
            anomaly_rate=0.55,
            n_test_normal=10,
            n_test_abnormal=11,
            n_validation=7,
            seed=seed,
        )
        assert [len(d[k]) for k in SETS] == [31, 7, 20, 21]
        assert sum(e["label"] for e in d["unlabeled"]) == 11
        _assert_disjoint(d)
        home = {}
        for name in SETS:
            for e in d[name]:
                assert home.setdefault(e["patient_id"], name) == name, f"patient {e['patient_id']} in two sets"


def test_build_patient_in_both_pools_stays_in_one_set():
    # a patient with normal and abnormal images: both halves go to the same set, or to none
    normals = [{"image": f"/d/n{i}.png", "patient_id": f"p{i // 2}"} for i in range(60)]
    abnormals = [{"image": f"/d/a{i}.png", "patient_id": f"p{i // 2}"} for i in range(60)]
    for seed in range(5):
        d = build_split(
            normals,
            abnormals,
            n_normal=15,
            n_unlabeled=10,
            anomaly_rate=0.5,
            n_test_normal=5,
            n_test_abnormal=5,
            n_validation=3,
            seed=seed,
        )
        home = {}
        for name in SETS:
            for e in d[name]:
                assert home.setdefault(e["patient_id"], name) == name


def test_build_refuses_infeasible_rate(tmp_path):
    normals, abnormals = _pools(tmp_path)
    with pytest.raises(SplitError, match=r"0\.33.*10.*3/10 = 0\.3.*4/10 = 0\.4"):
        build_split(
            normals, abnormals, n_normal=10, n_unlabeled=10, anomaly_rate=0.33, n_test_normal=5, n_test_abnormal=5
        )


def test_build_refuses_small_pool_and_writes_nothing(tmp_path):
    normals, abnormals = _pools(tmp_path / "data", n_normal=30, n_abnormal=40)
    with pytest.raises(SplitError) as err:
        d = build_split(
            normals,
            abnormals,
            n_normal=20,
            n_unlabeled=10,
            anomaly_rate=0.2,
            n_test_normal=5,
            n_test_abnormal=5,
            n_validation=3,
        )
        save_split(d, tmp_path / "split.json")
    msg = str(err.value)
    assert "normal_pool" in msg and "36" in msg and "has 30" in msg
    assert "5 test normals" in msg and "20 normal" in msg and "8 unlabeled normals" in msg
    assert not (tmp_path / "split.json").exists()


# ------------------------------------------------------------------------------------------------
# save / load


def test_round_trip_relative_paths_survive_a_move(tmp_path):
    normals, abnormals = _pools(tmp_path / "data", touch=True)
    d = build_split(
        normals,
        abnormals,
        n_normal=20,
        n_unlabeled=10,
        anomaly_rate=0.6,
        n_test_normal=5,
        n_test_abnormal=5,
        n_validation=4,
        seed=0,
        description="synthetic",
    )
    path = save_split(d, tmp_path / "data" / "split.json")
    written = json.loads(path.read_text())
    assert all(e["image"].startswith("images/") for name in SETS for e in written[name])
    assert not list(path.parent.glob("*.tmp"))

    shutil.move(tmp_path / "data", tmp_path / "elsewhere")
    split = load_split(tmp_path / "elsewhere" / "split.json")
    assert split.counts()["normal"] == 20 and split.counts()["validation"] == 4
    assert split.anomaly_rate() == 0.6
    assert all(e["image"].startswith(str(tmp_path / "elsewhere")) for e in split.test)
    # a Split saves back to the same content
    again = load_split(save_split(split, tmp_path / "elsewhere" / "copy.json"))
    assert again.to_dict() == split.to_dict()


def test_validation_holdout_seeded_exact_disjoint(tmp_path):
    d = _split_dict(normal=[{"image": f"images/n_{i}.png"} for i in range(25)])
    path = _write(tmp_path / "split.json", d)
    a = load_split(path, val_fraction=0.2, seed=0, check_files=False)
    assert len(a.validation) == 5 and len(a.normal) == 20
    assert not {e["image"] for e in a.validation} & {e["image"] for e in a.normal}
    assert a.validation == load_split(path, val_fraction=0.2, seed=0, check_files=False).validation
    assert a.validation != load_split(path, val_fraction=0.2, seed=1, check_files=False).validation
    # list order does not matter, only the files
    shuffled = _write(tmp_path / "shuffled.json", {**d, "normal": d["normal"][::-1]})
    assert a.validation == load_split(shuffled, val_fraction=0.2, seed=0, check_files=False).validation
    # at least one, and always one left for training
    assert len(load_split(path, val_fraction=0.0, check_files=False).validation) == 1


def test_validation_holdout_keeps_patients_together():
    normal = [{"image": f"/d/n_{i}.png", "patient_id": f"p{i // 4}"} for i in range(40)]
    train, val, dropped = hold_out_validation(normal, val_fraction=0.15, seed=0)  # 6: one patient split
    assert len(val) == 6 and len(train) + len(val) + len(dropped) == 40
    assert not {e["patient_id"] for e in train} & {e["patient_id"] for e in val + dropped}


# ------------------------------------------------------------------------------------------------
# refusals of load_split


def test_refuses_missing_file(tmp_path):
    d = _split_dict()
    _touch_all(tmp_path, d)
    (tmp_path / "images" / "t_1.png").unlink()
    with pytest.raises(
        SplitError,
        match=r"'test' entry 1 lists images/t_1\.png, which does not exist "
        r"\(looked for .*images/t_1\.png\)",
    ):
        load_split(_write(tmp_path / "split.json", d))


def test_refuses_many_missing_files_with_count(tmp_path):
    path = _write(tmp_path / "split.json", _split_dict())
    with pytest.raises(SplitError, match=r"14 listed files do not exist.*'normal' entry 0.*and 9 more"):
        load_split(path)


def test_refuses_duplicate_image_across_sets(tmp_path):
    d = _split_dict(test=[{"image": "images/n_3.png", "label": 0}, {"image": "images/t_1.png", "label": 1}])
    with pytest.raises(SplitError, match=r"'normal' entry 3 and 'test' entry 0 both list .*n_3\.png"):
        load_split(_write(tmp_path / "split.json", d), check_files=False)


def test_refuses_patient_in_two_sets(tmp_path):
    d = _split_dict(
        test=[{"image": "images/t_0.png", "label": 0, "patient_id": "n7"}, {"image": "images/t_1.png", "label": 1}]
    )
    with pytest.raises(SplitError, match=r"patient_id 'n7' is in 'normal' .* and in 'test'"):
        load_split(_write(tmp_path / "split.json", d), check_files=False)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ({"normal": []}, r"'normal' is missing or empty"),
        ({"test": []}, r"'test' is missing or empty"),
        ({"unlabelled": []}, r"unknown top-level key 'unlabelled' \(did you mean 'unlabeled'\?\)"),
        ({"format": "ddad-split/2"}, r"'format' must be 'ddad-split/1'"),
        ({"test": [{"image": "images/t_0.png", "label": 2}]}, r"'test' entry 0 .*'label' must be 0 or 1"),
        ({"test": [{"image": "images/t_0.png"}]}, r"'test' entry 0 .*need a 'label'"),
        ({"anomaly_rate": 0.6}, r"'anomaly_rate' is 0\.6 but the labels of 'unlabeled' give 1/2 = 0\.5"),
    ],
)
def test_refuses_bad_files(tmp_path, override, pattern):
    path = _write(tmp_path / "split.json", _split_dict(**override))
    with pytest.raises(SplitError, match=pattern) as err:
        load_split(path, check_files=False)
    assert str(path) in str(err.value)


def test_refuses_reference_format_in_load_split(tmp_path):
    path = _write(tmp_path / "data.json", {"train": {}, "test": {}})
    with pytest.raises(SplitError, match="read_reference_split"):
        load_split(path)


def test_datalist():
    entries = [{"image": "/a.png"}, {"image": "/b.png", "label": 1, "mask": "/m.png", "patient_id": "p"}]
    assert datalist(entries) == [{"image": "/a.png", "label": 0}, {"image": "/b.png", "label": 1, "mask": "/m.png"}]


# ------------------------------------------------------------------------------------------------
# the reference format


def _reference(tmp_path):
    names = {
        "train/0": [f"tn_{i}.png" for i in range(20)],
        "u/0": [f"un_{i}.png" for i in range(12)],
        "u/1": [f"ua_{i}.png" for i in range(15)],
        "test/0": [f"sn_{i}.png" for i in range(6)],
        "test/1": [f"sa_{i}.png" for i in range(6)],
    }
    for n in sum(names.values(), []):
        (tmp_path / "imgs").mkdir(exist_ok=True)
        (tmp_path / "imgs" / n).write_bytes(b"")
    data = {
        "train": {"0": names["train/0"], "unlabeled": {"0": names["u/0"], "1": names["u/1"]}},
        "test": {"0": names["test/0"], "1": names["test/1"]},
    }
    return _write(tmp_path / "data.json", data), tmp_path / "imgs", names


def test_reference_lists_taken_exactly(tmp_path):
    path, imgs, names = _reference(tmp_path)
    s = read_reference_split(path, imgs, val_fraction=0.1, seed=0)
    base = lambda es: sorted(Path(e["image"]).name for e in es)  # noqa: E731
    assert base(s.normal + s.validation) == sorted(names["train/0"]) and len(s.validation) == 2
    assert [Path(e["image"]).name for e in s.unlabeled] == names["u/0"] + names["u/1"]
    assert [e["label"] for e in s.unlabeled] == [0] * 12 + [1] * 15
    assert [(Path(e["image"]).name, e["label"]) for e in s.test] == [(n, 0) for n in names["test/0"]] + [
        (n, 1) for n in names["test/1"]
    ]
    assert s.anomaly_rate() == 15 / 27 and s.meta["anomaly_rate"] == 15 / 27
    # the reference code's selection: heads of the lists, exact
    h = read_reference_split(path, imgs, n_unlabeled=10, anomaly_rate=0.6)
    assert [Path(e["image"]).name for e in h.unlabeled] == names["u/0"][:4] + names["u/1"][:6]
    with pytest.raises(SplitError, match=r"needs 20 names from 'train/unlabeled/1', which lists 15"):
        read_reference_split(path, imgs, n_unlabeled=20, anomaly_rate=1.0)


def test_reference_resample_keeps_sizes_and_rate(tmp_path):
    path, imgs, _ = _reference(tmp_path)
    exact = read_reference_split(path, imgs, n_unlabeled=10, anomaly_rate=0.6)
    r1 = read_reference_split(path, imgs, resample_seed=1, n_unlabeled=10, anomaly_rate=0.6)
    r2 = read_reference_split(path, imgs, resample_seed=2, n_unlabeled=10, anomaly_rate=0.6)
    assert r1.counts() == exact.counts() == r2.counts()
    assert r1.anomaly_rate() == 0.6
    assert {e["image"] for e in r1.unlabeled} != {e["image"] for e in r2.unlabeled}
    _assert_disjoint(r1.to_dict())
    full = read_reference_split(path, imgs, resample_seed=0)  # the file's own D_u size and AR
    assert full.counts() == read_reference_split(path, imgs).counts()


def test_reference_missing_file_named(tmp_path):
    path, imgs, _ = _reference(tmp_path)
    (imgs / "sa_3.png").unlink()
    with pytest.raises(SplitError, match=r"'test/1' entry 3 lists sa_3\.png, which does not exist"):
        read_reference_split(path, imgs)


# The official files (read only; never copied into the repository). What they contain, verified:
# train/0 and test match the paper's D_n and test sizes, but train/unlabeled lists are pools larger
# than the paper's D_u (the reference code takes their heads: 4000 at AR 0.6 for RSNA). Columns:
# D_n, unlabeled/0, unlabeled/1, test/0, test/1, paper's D_u size.
OFFICIAL_COUNTS = {
    "rsna": (3851, 4000, 5012, 1000, 1000, 4000),
    "vincxr": (4000, 5606, 3394, 1000, 1000, 4000),
    "braintumor": (1000, 400, 600, 600, 600, 1000),
    "lag": (1500, 832, 900, 811, 811, 1500),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_official_reference_files(name, tmp_path):
    path = OFFICIAL / f"{name}_official.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    n_train, u0, u1, t0, t1, paper_u = OFFICIAL_COUNTS[name]
    s = read_reference_split(path, tmp_path, check_files=False)
    c = s.counts()
    assert c["normal"] + c["validation"] == n_train and c["validation"] == round(0.1 * n_train)
    assert (c["unlabeled_normal"], c["unlabeled_abnormal"], c["test_normal"], c["test_abnormal"]) == (u0, u1, t0, t1)
    assert s.anomaly_rate() == pytest.approx(u1 / (u0 + u1))
    paper = read_reference_split(path, tmp_path, check_files=False, n_unlabeled=paper_u, anomaly_rate=0.6)
    assert paper.counts()["unlabeled"] == paper_u and paper.anomaly_rate() == pytest.approx(0.6)
    assert isinstance(paper, Split)
