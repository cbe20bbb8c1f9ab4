"""Stage 2: frozen stage-1 maps, ASR-Net training on synthetic anomalies, validation-only selection."""

import json

import pytest
import torch

from scripts.engines.ensemble import seeded_members
from scripts.networks.backbones import AE
from scripts.scoring.pipeline import DDADPipeline
from scripts.engines.refinement import (
    REFINER_SCORES,
    RELIABLE_LOSS_RATIO,
    RELIABLE_SELECTION_AUC,
    MapExtractor,
    RefinementTrainer,
    RefinerSelection,
    build_refiners,
    load_refiner,
    make_validation_set,
    map_scales,
    refiner_names,
)
from scripts.handlers.reports import ScoreReport, format_table


def members(seeds):
    return [m.eval() for m in seeded_members(lambda: AE(1, 16, 4), seeds)]


@pytest.fixture
def extractor():
    return MapExtractor(members([0, 1, 2]), members([1000, 1001, 1002]))


@pytest.fixture
def images():
    return torch.rand(24, 1, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_extractor_is_frozen_and_stays_in_eval_mode(extractor, images):
    extractor.train()
    assert not any(m.training for m in extractor.modules())
    assert not any(p.requires_grad for p in extractor.parameters())
    maps = extractor(images[:4])
    assert set(maps) == {"A_rec", "A_rec_ensemble", "A_intra", "A_inter"}
    assert maps["A_intra"].shape == (4, 1, 16, 16)


def test_map_scales_are_the_mean_maps_of_the_normals(extractor, images):
    scales = map_scales(extractor, images, batch_size=5)
    maps = extractor(images)
    for name in ("A_intra", "A_inter"):
        assert scales[name] == pytest.approx(maps[name].mean().item(), rel=1e-5)


def test_refiners_follow_the_data():
    assert refiner_names(True) == ["dual", "intra"] and refiner_names(False) == ["intra"]
    nets = build_refiners(["dual", "intra"], seed=0, width=8)
    assert nets["dual"].body[0].in_channels == 2 and nets["intra"].body[0].in_channels == 1


def test_validation_set_is_fixed_by_the_seed_and_half_synthetic():
    normals = torch.rand(20, 1, 16, 16)
    a_images, a_labels = make_validation_set(normals, seed=4)
    b_images, b_labels = make_validation_set(normals, seed=4)
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    has_anomaly = a_labels.flatten(1).amax(1) > 0
    assert a_images.shape[0] == 40 and has_anomaly[20:].all() and not has_anomaly[:20].any()
    assert torch.equal(a_images[:20], normals)
    assert not torch.equal(make_validation_set(normals, seed=5)[1], a_labels)


def test_training_selects_on_validation_and_records_why(extractor, images, tmp_path):
    validation = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    refiners = build_refiners(["dual", "intra"], seed=0, width=8)
    selection = RefinerSelection(tmp_path, validation, seed=0)
    trainer = RefinementTrainer("cpu", 3, refiners, extractor, images, seed=0, batch_size=8, handlers=[selection])
    trainer.run()
    record = json.loads((tmp_path / "asr_selection.json").read_text())
    assert set(record["refiners"]) == {"dual", "intra"}
    assert record["validation_images"] == 32
    for name in ("dual", "intra"):
        assert 1 <= record["refiners"][name]["epoch"] <= 3
        assert f"val_R_{name}_auc" in trainer.state.metrics
        net, scales = load_refiner(tmp_path, name, width=8)
        assert set(scales) >= {"A_intra", "A_inter"}
    # the selected refiners plug into the deployed pipeline
    pipeline = DDADPipeline(
        extractor.ndm, extractor.udm, {n: load_refiner(tmp_path, n, width=8)[0] for n in ("dual", "intra")}, scales
    )
    maps = pipeline(images[:2])
    assert pipeline.primary_score == "R_dual"
    assert 0 <= maps["R_dual"].min() and maps["R_dual"].max() <= 1


def test_stage2_training_is_reproducible(extractor, images):
    def train():
        refiners = build_refiners(["intra"], seed=1, width=8)
        RefinementTrainer("cpu", 2, refiners, extractor, images, seed=1, batch_size=8).run()
        return refiners["intra"].state_dict()

    first, second = train(), train()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_batch_of_one_is_refused(extractor, images):
    with pytest.raises(ValueError, match="asr_batch_size"):
        RefinementTrainer("cpu", 1, build_refiners(["intra"], 0, 8), extractor, images, batch_size=1)


class DeviationMaps(torch.nn.Module):
    """Stand-in for stage-1 maps that respond to a patch: |x - the image's median|."""

    def forward(self, x):
        deviation = (x - x.flatten(1).median(1).values.view(-1, 1, 1, 1)).abs()
        return {"A_intra": deviation, "A_inter": deviation}


def test_refiners_learn_to_find_synthetic_patches_when_the_maps_show_them(tmp_path):
    # images of one grey level each: a patch from another image stands out in the maps
    g = torch.Generator().manual_seed(0)
    make = lambda n: torch.rand(n, 1, 1, 1, generator=g) * 2 - 1 + 0.01 * torch.randn(n, 1, 32, 32, generator=g)  # noqa: E731
    selection = RefinerSelection(tmp_path, make(30), seed=0)
    RefinementTrainer(
        "cpu",
        3,
        build_refiners(["dual", "intra"], 0, width=32),
        DeviationMaps(),
        make(120),
        seed=0,
        handlers=[selection],
        scales={"A_intra": 0.1, "A_inter": 0.1},
    ).run()
    assert selection.best["dual"]["val_auc"] > 0.85 and selection.best["intra"]["val_auc"] > 0.85


def test_a_refiner_that_never_beats_chance_is_flagged_in_record_log_and_report(extractor, images, tmp_path, caplog):
    # Random maps of random images: nothing for the refiners to learn, so validation AUC stays near 0.5.
    validation = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    selection = RefinerSelection(tmp_path, validation, seed=0)
    trainer = RefinementTrainer(
        "cpu",
        1,
        build_refiners(["dual", "intra"], seed=0, width=8),
        extractor,
        images,
        seed=0,
        batch_size=8,
        handlers=[selection],
    )
    with caplog.at_level("WARNING", logger="ddad"):
        trainer.run()
    record = json.loads((tmp_path / "asr_selection.json").read_text())
    for entry in record["refiners"].values():
        expected = entry["val_auc"] >= RELIABLE_SELECTION_AUC and entry["loss_ratio"] <= RELIABLE_LOSS_RATIO
        assert entry["reliable"] == expected
        # the constant predictor's loss is computed for the labels in use, and the training loss set against it
        assert 0 < entry["constant_prediction_loss"] < 0.2
        assert entry["loss_ratio"] == pytest.approx(entry["final_train_loss"] / entry["constant_prediction_loss"])
        assert 0 <= entry["chance_probability"] <= 1 and len(entry["val_auc_ci95"]) == 2
    unreliable = [n for n, e in record["refiners"].items() if not e["reliable"]]
    assert unreliable, "a refiner trained one epoch on random maps should not look reliable"
    assert all(f"asr {n}: not reliable" in caplog.text for n in unreliable)
    # the maps of random members do not respond to the patches, and stage 2 says so before training
    assert "barely respond" in caplog.text
    response = record["diagnostics"]["patch_response"]["training"]["training_normals"]
    assert set(response) == {"A_rec", "A_intra", "A_inter"}

    metrics = {
        "A_inter": {"auc": 0.9, "ap": 0.9},
        "R_dual": {"auc": 0.3, "ap": 0.4},
        "R_intra": {"auc": 0.5, "ap": 0.5},
    }
    report = ScoreReport(tmp_path / "eval", selection_file=tmp_path / "asr_selection.json")
    report.add_selection(metrics)
    assert metrics["R_dual"]["selection_val_auc"] == pytest.approx(record["refiners"]["dual"]["val_auc"])
    assert "selection_val_auc" not in metrics["A_inter"]
    assert metrics["A_inter"]["patch_response"]["paired_share"] == pytest.approx(response["A_inter"]["paired_share"])
    table = format_table(metrics)
    for name in unreliable:
        assert f"{REFINER_SCORES[name]}: held-out AUC" in table and "NOT reliable" in table
    assert "stage 2 patch response" in table


def test_extractor_runs_the_members_fused_and_gives_the_per_member_maps(extractor, images):
    from scripts.networks.fused import FusedAE
    from scripts.scoring.scores import discrepancy_maps

    assert isinstance(extractor.members, FusedAE)
    with torch.no_grad():
        ndm = torch.stack([m(images) for m in extractor.ndm])
        udm = torch.stack([m(images) for m in extractor.udm])
    expected = discrepancy_maps(images, ndm, udm, False)
    got = extractor(images)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5)


def test_an_epoch_saved_but_not_validated_before_a_kill_is_validated_on_resume(extractor, images, tmp_path):
    # The state a SIGKILL leaves between MemberCheckpoints' save and RefinerSelection's validation
    # of the same epoch: checkpoints of epoch 2, asr_selection.json of epoch 1. Before the fix the
    # selection never saw epoch 2 and could pick another epoch than an uninterrupted run.
    from scripts.handlers.training import MemberCheckpoints

    validation = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1

    def trainer(folder, epochs, select=True):
        handlers = [MemberCheckpoints(folder, "asr")] + (
            [RefinerSelection(folder, validation, seed=0)] if select else []
        )
        refiners = build_refiners(["dual", "intra"], seed=0, width=8)
        return RefinementTrainer("cpu", epochs, refiners, extractor, images, seed=0, batch_size=8, handlers=handlers)

    trainer(tmp_path / "ref", 3).run()
    trainer(tmp_path / "run", 1).run()
    trainer(tmp_path / "run", 2, select=False).run()  # epoch 2 checkpointed, never validated
    trainer(tmp_path / "run", 3).run()
    reference, resumed = (json.loads((tmp_path / d / "asr_selection.json").read_text()) for d in ("ref", "run"))
    for name in ("dual", "intra"):
        assert [h["epoch"] for h in resumed["history"][name]] == [1, 2, 3]
        for ref, got in zip(reference["history"][name], resumed["history"][name]):
            assert got["val_auc"] == ref["val_auc"] and got["val_loss"] == ref["val_loss"]
        assert resumed["refiners"][name]["epoch"] == reference["refiners"][name]["epoch"]
        ref_net, got_net = (load_refiner(tmp_path / d, name, width=8)[0] for d in ("ref", "run"))
        for a, b in zip(ref_net.state_dict().values(), got_net.state_dict().values()):
            assert torch.equal(a, b)
