"""Running the bundle's workflows in this process: each workflow's config files, checked overrides.

``run_workflow("training", {"epochs": 5})`` is ``python -m monai.bundle run training`` with the
workflow's config files (``WORKFLOW_CONFIGS``), the bundle's metadata and logging files, and every
override key checked against the configs before anything starts (``config_guard``). The command
line (``python -m ddad_bundle``), the experiments and the benchmarks all run workflows through it.

Example::

    >>> run_workflows(["training", "training_asr", "evaluating"], {"epochs": 5}, [DEMO_CONFIG])
"""

from __future__ import annotations

from pathlib import Path

from ..data.cache import root_cause
from . import config_guard
from .locks import release_held_locks

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = BUNDLE_ROOT / "configs"
# The demo's shortened schedule, as an overlay on every workflow (docs/README.md says why each value).
DEMO_CONFIG = CONFIG_DIR / "demo.json"

WORKFLOW_CONFIGS = {
    "training": ["common.json", "train.json"],
    "training_asr": ["common.json", "train.json", "train_asr.json"],
    "evaluating": ["common.json", "train.json", "evaluate.json"],
    "inferring": ["common.json", "inference.json"],
    "exporting": ["common.json", "inference.json", "export.json"],
}
# SALAD (the bundle's second method, docs/salad.md): the same workflow names on its own configs.
SALAD_WORKFLOW_CONFIGS = {
    "training": ["common.json", "salad_train.json"],
    "evaluating": ["common.json", "salad_train.json", "salad_evaluate.json"],
    "inferring": ["common.json", "salad_train.json", "inference.json", "salad_inference.json"],
    "exporting": ["common.json", "salad_train.json", "inference.json", "salad_inference.json", "export.json"],
}
METHOD_CONFIGS = {"ddad": WORKFLOW_CONFIGS, "salad": SALAD_WORKFLOW_CONFIGS}
FIT_WORKFLOWS = {"ddad": ["training", "training_asr", "evaluating"], "salad": ["training", "evaluating"]}


def config_files_for(workflow: str, extra=None, method: str = "ddad") -> list[str]:
    """The ``method``'s workflow config files, then ``extra`` ones (dataset configs, overlays), as absolute paths."""
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHOD_CONFIGS)}")
    workflows = METHOD_CONFIGS[method]
    if workflow not in workflows:
        raise ValueError(f"unknown {method} workflow {workflow!r}; choose one of {', '.join(workflows)}")
    files = [str(CONFIG_DIR / name) for name in workflows[workflow]]
    return files + [str(Path(f).resolve()) for f in (extra or [])]


def run_workflow(
    workflow: str, overrides: dict | None = None, extra_configs=None, method: str = "ddad", release_locks: bool = True
) -> None:
    """Run one bundle workflow of ``method`` in this process, after checking the override keys.

    ``release_locks=False`` keeps the run folder's lock for a next workflow of the same sequence."""
    from monai.bundle import run

    overrides = dict(overrides or {})
    files = config_files_for(workflow, extra_configs, method)
    # The configs' `initialize` step checks these overrides (config_guard.record_run) before any work.
    config_guard.set_invocation(files, overrides)
    try:
        run(
            run_id=workflow,
            config_file=files,
            meta_file=str(CONFIG_DIR / "metadata.json"),
            logging_file=str(CONFIG_DIR / "logging.conf"),
            **overrides,
        )
    except RuntimeError as error:
        # MONAI reports a failing config expression as 'Failed to evaluate ...'; the error
        # underneath names the file or key and the problem, so that is the one to raise.
        raise root_cause(error) from error
    finally:
        config_guard.clear_invocation()
        if release_locks:
            release_held_locks()


def run_workflows(workflows: list[str], overrides: dict, extra_configs=None, method: str = "ddad") -> None:
    """Several workflows in turn with one set of overrides; each gets the keys its configs define.

    A key no workflow defines, or a value of the wrong type or range, is refused before the first
    one starts, so a typo in a key only the last workflow reads does not cost the first its run.
    The run folder's lock is held from the first workflow to the end of the last: another run
    started in between would otherwise take it and interleave with this one.
    """
    files = {w: config_files_for(w, extra_configs, method) for w in workflows}
    union = list(dict.fromkeys(f for w in workflows for f in files[w]))
    config_guard.check_overrides(union, overrides)
    for workflow in workflows:
        config_guard.check_workflow_values(files[workflow], overrides)
    try:
        for workflow in workflows:
            known = config_guard.known_keys(files[workflow])
            chosen = {k: v for k, v in overrides.items() if k.replace("::", "#") in known}
            run_workflow(workflow, chosen, extra_configs, method, release_locks=False)
    finally:
        release_held_locks()
