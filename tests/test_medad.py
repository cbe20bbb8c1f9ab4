"""Med-AD / MedIAnomaly-Data folders (``<root>/<DS>/images/`` + reference ``data.json``) through the
dataset configs: D_u selection, the split report, pixel duplicates and ``--drop_duplicates``,
``--split_file data.json --image_dir``, and one end-to-end ``fit`` on a generated folder."""

import json
import shutil

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from conftest import BUNDLE_ROOT, SHARED, TINY_RUN
from ddad_bundle.cli import main as cli_main
from scripts.data.audit import audit_split, pixel_hashes
from scripts.data.cache import root_cause
from scripts.data.medad import read_any_split
from scripts.data.splits import SplitError, load_split

CONFIGS = BUNDLE_ROOT / "configs"
BRAIN_CONFIG = CONFIGS / "datasets" / "brain_tumor.json"


def brain_slice(rng, abnormal: bool, size: int = 48) -> np.ndarray:
    """A bright disc on black (so the brain pipeline's foreground crop has work), a blob if abnormal."""
    yy, xx = np.mgrid[:size, :size]
    r = size * rng.uniform(0.3, 0.4)
    image = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r * r, 120.0, 0.0)
    image += rng.normal(0, 8, image.shape) * (image > 0)
    if abnormal:
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = 230
    return np.clip(image, 0, 255).astype(np.uint8)


def make_medad(root, name="BrainTumor", counts=(30, 6, 8, 5, 5), duplicates=(), seed=0):
    """A Med-AD data set folder: ``images/`` and the reference ``data.json``.

    ``counts``: train/0, unlabeled/0, unlabeled/1, test/0, test/1. ``duplicates``: (list, index,
    source list, source index) pairs whose image is written with the source image's pixels.
    """
    folder = root / name
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    keys = ("train/0", "unlabeled/0", "unlabeled/1", "test/0", "test/1")
    names = {k: [f"{k.replace('/', '_')}_{i:03d}.png" for i in range(n)] for k, n in zip(keys, counts)}
    pixels = {(k, i): brain_slice(rng, k.endswith("1")) for k in keys for i in range(len(names[k]))}
    for key, i, src_key, src_i in duplicates:
        pixels[(key, i)] = pixels[(src_key, src_i)]
    for (key, i), array in pixels.items():
        Image.fromarray(array).save(folder / "images" / names[key][i])
    data = {
        "train": {"0": names["train/0"], "unlabeled": {"0": names["unlabeled/0"], "1": names["unlabeled/1"]}},
        "test": {"0": names["test/0"], "1": names["test/1"]},
    }
    (folder / "data.json").write_text(json.dumps(data))
    return folder, names


def brain_parser(data_dir, runs_dir, **overrides):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train.json"), str(BRAIN_CONFIG)])
    parser.update(dict(data_dir=str(data_dir), runs_dir=str(runs_dir), **overrides))
    return parser


def parsed_error(parser, key):
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps config errors; the CLI reports the root cause
        parser.get_parsed_content(key)
    return root_cause(failure.value)


def test_dataset_config_reads_the_medad_layout_with_the_reference_d_u(tmp_path):
    folder, names = make_medad(tmp_path)
    split = brain_parser(folder, tmp_path / "runs", n_unlabeled=10, anomaly_rate=0.6).get_parsed_content("split")
    counts = split.counts()
    # D_n is train/0 less the seeded 10% validation; D_u the heads of the lists: 4 normal + 6 abnormal
    assert (counts["normal"], counts["validation"], counts["unlabeled"]) == (27, 3, 10)
    assert (counts["test_normal"], counts["test_abnormal"]) == (5, 5)
    assert split.anomaly_rate() == pytest.approx(0.6)
    chosen = sorted(e["image"].rsplit("/", 1)[1] for e in split.unlabeled)
    assert chosen == sorted(names["unlabeled/0"][:4] + names["unlabeled/1"][:6])
    again = brain_parser(folder, tmp_path / "runs2", n_unlabeled=10, anomaly_rate=0.6).get_parsed_content("split")
    assert [e["image"] for e in again.validation] == [e["image"] for e in split.validation]  # seeded holdout
    report = json.loads((tmp_path / "runs" / "brain_brain_tumor_ae" / "split_report.json").read_text())
    assert report["counts"]["unlabeled"] == 10 and report["unlabeled_anomaly_rate"] == 0.6
    assert report["duplicates"]["across_sets"] == {}


def test_a_d_u_the_lists_cannot_fill_is_refused_not_shrunk(tmp_path):
    folder, _ = make_medad(tmp_path)
    error = parsed_error(brain_parser(folder, tmp_path / "runs", n_unlabeled=20, anomaly_rate=0.6), "split")
    assert isinstance(error, SplitError)
    assert "needs 8 names from 'train/unlabeled/0', which lists 6" in str(error)


def test_duplicates_across_sets_are_reported_by_name_and_dropped_on_request(tmp_path, caplog):
    # test/0 #1 repeats train/0 #2 and test/1 #0 repeats unlabeled/1 #3: both cross-set pairs must be found
    folder, names = make_medad(tmp_path, duplicates=[("test/0", 1, "train/0", 2), ("test/1", 0, "unlabeled/1", 3)])
    runs = tmp_path / "runs"
    with caplog.at_level("INFO", logger="ddad.split"):
        split = brain_parser(folder, runs, n_unlabeled=10, anomaly_rate=0.6).get_parsed_content("split")
    report = json.loads((runs / "brain_brain_tumor_ae" / "split_report.json").read_text())
    across = report["duplicates"]["across_sets"]
    in_validation = any(e["image"].endswith(names["train/0"][2]) for e in split.validation)
    assert across == {("validation/test" if in_validation else "normal/test"): 1, "unlabeled/test": 1}
    examples = [x for pair in report["duplicates"]["examples"].values() for x in pair]
    assert f"{names['unlabeled/1'][3]} = {names['test/1'][0]}" in examples
    assert any("WARNING 1 pixel-identical" in r.message and names["test/0"][1] in r.message for r in caplog.records)
    assert len(split.test) == 10  # reported, not dropped, by default

    dropped = brain_parser(
        folder, tmp_path / "runs_drop", n_unlabeled=10, anomaly_rate=0.6, drop_duplicates=True
    ).get_parsed_content("split")
    test_names = {e["image"].rsplit("/", 1)[1] for e in dropped.test}
    assert len(dropped.test) == 8 and not test_names & {names["test/0"][1], names["test/1"][0]}
    assert len(dropped.unlabeled) == 10 and len(dropped.normal) + len(dropped.validation) == 30


def test_pixel_hashes_ignore_the_file_format_and_reuse_the_cache(tmp_path):
    array = brain_slice(np.random.default_rng(1), False)
    Image.fromarray(array).save(tmp_path / "a.png")
    Image.fromarray(array).save(tmp_path / "b.tif")  # the same pixels in another container
    Image.fromarray(array + 1).save(tmp_path / "c.png")
    cache = tmp_path / "hashes.json"
    first = pixel_hashes([str(tmp_path / n) for n in ("a.png", "c.png")], cache)
    assert first[str(tmp_path / "a.png")] != first[str(tmp_path / "c.png")]
    stored = json.loads(cache.read_text())
    stored[str(tmp_path / "a.png")][2] = "from-cache"
    cache.write_text(json.dumps(stored))
    assert pixel_hashes([str(tmp_path / "a.png")], cache)[str(tmp_path / "a.png")] == "from-cache"


def test_split_file_accepts_a_reference_file_with_an_image_dir(tmp_path):
    folder, _ = make_medad(tmp_path, name="LAG")
    moved = tmp_path / "elsewhere"
    shutil.move(str(folder / "images"), moved)
    with pytest.raises(SplitError, match="give --image_dir"):
        read_any_split(folder / "data.json")
    split = read_any_split(folder / "data.json", image_dir=moved, n_unlabeled=10, anomaly_rate=0.6)
    assert split.counts()["unlabeled_abnormal"] == 6 and split.test[0]["image"].startswith(str(moved))
    with pytest.raises(SplitError, match="'image_dir'"):
        read_any_split(folder / "data.json", image_dir=tmp_path / "nowhere")


def test_a_medad_root_or_an_empty_folder_is_refused_with_the_layouts(tmp_path, capsys):
    make_medad(tmp_path)
    error = parsed_error(brain_parser(tmp_path, tmp_path / "runs"), "split_file")
    assert f"--data_dir {tmp_path / 'BrainTumor'}" in str(error)
    (tmp_path / "empty").mkdir()
    error = parsed_error(brain_parser(tmp_path / "empty", tmp_path / "runs"), "split_file")
    assert "split.json" in str(error) and "data.json" in str(error) and "images/" in str(error)


def test_ddad_split_files_still_load_and_are_audited(tmp_path):
    folder, _ = make_medad(tmp_path)
    split = read_any_split(folder / "data.json", n_unlabeled=10, anomaly_rate=0.6)
    from scripts.data.splits import save_split

    path = save_split(split, tmp_path / "split.json")
    loaded, report = audit_split(read_any_split(path), report_dir=tmp_path / "audit")
    assert loaded.counts() == load_split(path).counts() and report["counts"]["validation"] == 3


@pytest.mark.slow
def test_fit_trains_a_medad_folder_end_to_end_through_the_dataset_config(tmp_path):
    folder, names = make_medad(tmp_path, duplicates=[("test/0", 0, "train/0", 5)])
    runs = tmp_path / "runs"
    settings = {k: v for k, v in TINY_RUN.items() if not k.startswith("phantom#")}
    argv = [
        "fit",
        "--config_file",
        str(BRAIN_CONFIG),
        "--data_dir",
        str(folder),
        "--runs_dir",
        str(runs),
        "--n_unlabeled",
        "10",
        "--anomaly_rate",
        "0.6",
        "--epochs",
        "2",
        "--drop_duplicates",
        "true",
    ]
    argv += [a for k, v in settings.items() for a in (f"--{k}", str(v))]
    assert cli_main(argv) == 0
    run = runs / "brain_brain_tumor_ae"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {"A_inter", "R_dual"} <= set(metrics) and 0 <= metrics["R_dual"]["auc"] <= 1
    report = json.loads((run / "split_report.json").read_text())
    assert report["dropped"][0]["image"].endswith(names["test/0"][0]) and report["counts"]["test"] == 9
    scored = (run / "eval" / "scores.csv").read_text()
    assert names["test/0"][0] not in scored and names["test/0"][1] in scored


@pytest.mark.skipif(
    not (SHARED / "splits" / "braintumor_official.json").is_file(),
    reason="the reference split files are not in ../shared/splits",
)
def test_the_official_brain_tumor_split_gives_the_papers_d_u(tmp_path):
    """The real reference file, with placeholder images of its names (pixels differ per name)."""
    official = json.loads((SHARED / "splits" / "braintumor_official.json").read_text())
    folder = tmp_path / "BrainTumor"
    (folder / "images").mkdir(parents=True)
    every = (
        official["train"]["0"]
        + official["train"]["unlabeled"]["0"]
        + official["train"]["unlabeled"]["1"]
        + official["test"]["0"]
        + official["test"]["1"]
    )
    for name in every:
        (folder / "images" / name).write_bytes(b"")
    (folder / "data.json").write_text(json.dumps(official))
    split = read_any_split(folder / "data.json", n_unlabeled=1000, anomaly_rate=0.6)
    assert split.counts()["unlabeled"] == 1000 and split.anomaly_rate() == pytest.approx(0.6)
    assert (split.counts()["test_normal"], split.counts()["test_abnormal"]) == (600, 600)
    assert len(split.normal) + len(split.validation) == 1000


def test_split_file_key_takes_a_reference_file_with_the_image_dir_key(tmp_path):
    """--split_file data.json --image_dir DIR on the common config, without a dataset config."""
    folder, _ = make_medad(tmp_path, name="LAG")
    moved = tmp_path / "pictures"
    shutil.move(str(folder / "images"), moved)
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.json"), str(CONFIGS / "train.json")])
    parser.update(
        {
            "split_file": str(folder / "data.json"),
            "image_dir": str(moved),
            "runs_dir": str(tmp_path / "r"),
            "modality": "fundus",
            "dataset": "lag",
        }
    )
    split = parser.get_parsed_content("split")
    assert split.counts()["unlabeled"] == 14 and split.anomaly_rate() == pytest.approx(8 / 14)  # whole lists
    assert all(e["image"].startswith(str(moved)) for e in split.normal + split.test)
