"""Every workflow built as the model zoo's CI builds it: MONAI's ``ConfigWorkflow``, its properties checked.

``ConfigWorkflow(workflow_type=...)`` knows the model zoo's property names (``bundle_root``,
``device``, ``dataset_dir``, ``train#trainer``, ``train#dataset``, ``evaluator``, ...). Each test
initializes a workflow with a tiny schedule, checks the properties with ``check_properties``
(MONAI's lists less the ``ABSENT`` ones: a workflow that has no such part, with the reason here
and in docs/README.md) and reads them back as the objects the workflow runs.
"""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle.properties import InferProperties, TrainProperties
from monai.data import CacheDataset

from conftest import TINY_RUN
from scripts.engines.ensemble import EnsembleTrainer, TrainerSequence
from scripts.runtime.workflows import CONFIG_DIR, config_files_for

# Model-zoo properties a workflow does not have, and why.
ABSENT = {
    # stage 1 steps each member on its own batch with its objective: there is no inferer
    "training": ["train_inferer"],
    "training_asr": ["train_inferer"],
}
# Model-zoo properties a workflow holds under another key (documented aliases), and why.
ALIASES = {
    # the key `dataset` names the data set (phantom, folder, rsna, ...) in every config
    "evaluating": {"dataset": "test#dataset", "dataset_data": "test#entries"},
    "inferring": {"dataset": "inference#dataset", "dataset_data": "inference#entries"},
    "exporting": {"dataset": "inference#dataset", "dataset_data": "inference#entries"},
}
STAGE1 = {
    k: v for k, v in TINY_RUN.items() if k.startswith("phantom#") or k in ("image_size", "batch_size", "progress_bar")
}


def properties_file(folder, workflow: str, workflow_type: str):
    """MONAI's property list of the workflow type, less the workflow's ``ABSENT`` ones (a required
    property that a config lacks makes ``check_properties`` raise, not report)."""
    table = TrainProperties if workflow_type == "train" else InferProperties
    kept = {name: dict(p) for name, p in table.items() if name not in ABSENT.get(workflow, [])}
    for name, key in ALIASES.get(workflow, {}).items():
        kept[name]["id"] = key
    path = folder / f"properties_{workflow}.json"
    path.write_text(json.dumps({workflow_type: kept}))
    return path


def build(workflow: str, workflow_type: str, extra=None, **overrides) -> ConfigWorkflow:
    folder = overrides["runs_dir"]
    flow = ConfigWorkflow(
        config_file=config_files_for(workflow, extra),
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        workflow_type=workflow_type,
        properties_path=properties_file(Path(folder), workflow, workflow_type),
        **overrides,
    )
    flow.initialize()
    return flow


def test_training_has_the_model_zoo_train_properties(tmp_path):
    flow = build("training", "train", runs_dir=str(tmp_path), epochs=3, **STAGE1)
    assert flow.check_properties() == []
    assert flow.bundle_root == "." and flow.device.type in ("cpu", "cuda")
    assert flow.dataset_dir == str(tmp_path / "data" / "cxr_phantom")
    assert isinstance(flow.train_dataset, CacheDataset) and len(flow.train_dataset) == 80  # phantom#n_normal
    assert isinstance(flow.trainer, EnsembleTrainer) and flow.max_epochs == 3
    assert flow.trainer.module == "ndm+udm"  # one loop for both modules
    # the trainer trains on the cached dataset the property names
    assert torch.equal(flow.trainer.groups[0].data.images.cpu()[0], flow.train_dataset[0]["image"].as_tensor())
    # a property set through the workflow reaches the trainer it builds
    flow.max_epochs = 5
    flow.initialize()
    assert flow.trainer.state.max_epochs == 5


def test_torchrun_overlay_keeps_one_trainer_block_with_a_loop_per_module(tmp_path):
    flow = build("training", "train", [CONFIG_DIR / "multi_gpu_train.json"], runs_dir=str(tmp_path), epochs=2, **STAGE1)
    # outside torchrun the plan is one process that trains every member
    assert isinstance(flow.trainer, TrainerSequence)
    assert [t.module for t in flow.trainer.trainers] == ["ndm", "udm"]
    assert all(t.state.max_epochs == 2 for t in flow.trainer.trainers)


def test_demo_overlay_sets_the_demo_schedule(tmp_path):
    flow = build("training", "train", [CONFIG_DIR / "demo.json"], runs_dir=str(tmp_path), **STAGE1)
    assert flow.max_epochs == 60
    assert flow.trainer.groups[0].data.batch_size == 16
    assert flow.parser.get_parsed_content("save_every") == 10


def test_training_asr_has_the_model_zoo_train_properties(tmp_path):
    flow = build("training_asr", "train", runs_dir=str(tmp_path), **STAGE1)
    assert flow.check_properties() == []
    assert flow.dataset_dir == str(tmp_path / "data" / "cxr_phantom")


@pytest.mark.slow
def test_evaluating_has_the_model_zoo_infer_properties(cxr_run):
    runs_dir, _ = cxr_run
    flow = build(
        "evaluating",
        "infer",
        runs_dir=str(runs_dir),
        image_size=32,
        n_bootstrap=10,
        **{k: v for k, v in STAGE1.items() if k.startswith("phantom#")},
    )
    assert flow.check_properties() == []
    assert len(flow.dataset) == 40 and flow.evaluator.data_loader.dataset is flow.dataset
    assert len(flow.dataset_data) == 40 and {e["label"] for e in flow.dataset_data} == {0, 1}
    assert callable(flow.network_def) and flow.evaluator.inferer is flow.inferer
    assert [type(h).__name__ for h in flow.handlers] == ["ScoreReport", "HtmlReport"]


@pytest.mark.slow
@pytest.mark.parametrize("workflow", ["inferring", "exporting"])
def test_inference_workflows_have_the_model_zoo_infer_properties(cxr_run, workflow, tmp_path):
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Compose, Invertd
    from scripts.scoring.pipeline import DeployedPipeline

    runs_dir, _ = cxr_run
    image = sorted((runs_dir / "data" / "cxr_phantom" / "images").iterdir())[0]
    flow = build(workflow, "infer", runs_dir=str(runs_dir), image_size=32, input_paths=[str(image)],
                 inference_dir=str(tmp_path / "scored"))  # fmt: skip
    assert flow.check_properties() == []
    assert flow.dataset_dir == str(runs_dir / "data" / "cxr_phantom")
    assert isinstance(flow.postprocessing, Compose)
    assert any(isinstance(t, Invertd) for t in flow.postprocessing.transforms)
    assert callable(flow.network_def) and flow.preprocessing is not None
    # the model-zoo inference idiom: the evaluator runs the deployed network over the dataset
    assert isinstance(flow.evaluator, SupervisedEvaluator) and isinstance(flow.evaluator.network, DeployedPipeline)
    assert flow.evaluator.data_loader.dataset is flow.dataset and len(flow.dataset) == 1
