"""Every numeric, boolean, list and choice key is checked for type and range before a run starts."""

import json
import os
import subprocess
import sys

import pytest

from conftest import BUNDLE_ROOT
from scripts.runtime.config_guard import _flat_keys
from scripts.runtime.config_schema import KEY_RULES, ConfigValueError, all_rules, check_values
from scripts.runtime.workflows import CONFIG_DIR, METHOD_CONFIGS, config_files_for, run_workflow

# configs/published/ holds measured metrics.json files (publish_metrics), not configuration
ALL_CONFIGS = sorted(
    str(p) for p in CONFIG_DIR.rglob("*.json") if "metadata" not in p.name and "published" not in p.parts
)
# Literal keys that are not numbers, booleans or lists with a rule, and why.
EXEMPT = {"image_dir", "n_unlabeled", "anomaly_rate", "input_root", "map_note", "synthesis_holdout"}


def _literal_keys(config, prefix=""):
    for key, value in config.items():
        name = prefix + key
        if isinstance(value, dict):
            if "_target_" not in value:
                yield from _literal_keys(value, name + "#")
        elif isinstance(value, (bool, int, float)) or (
            isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
        ):
            yield name


@pytest.mark.parametrize("key", sorted(all_rules()))
def test_every_rule_refuses_text_naming_the_key(key):
    with pytest.raises(ConfigValueError, match=f"config key '{key}': 'abc' is not"):
        check_values({k: v for k, v in [(key, "abc")]} if "#" not in key else _nested(key, "abc"))


def _nested(key, value):
    out = node = {}
    *parents, last = key.split("#")
    for part in parents:
        node[part] = {}
        node = node[part]
    node[last] = value
    return out


def test_every_rule_names_a_key_some_config_defines():
    defined = set()
    for path in ALL_CONFIGS:
        defined |= {key.lstrip("+") for key in _flat_keys(json.loads(open(path).read()))}
    assert sorted(set(all_rules()) - defined) == []


def test_every_literal_number_boolean_and_list_key_has_a_rule():
    missing = set()
    for path in ALL_CONFIGS:
        missing |= set(_literal_keys(json.loads(open(path).read()))) - set(all_rules()) - EXEMPT
    assert sorted(missing) == []


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_the_shipped_defaults_pass(method):
    from monai.bundle import ConfigParser

    for workflow in METHOD_CONFIGS[method]:
        for extra in ([], [str(CONFIG_DIR / "demo.json")], [str(CONFIG_DIR / "datasets" / "lag.json")]):
            check_values(ConfigParser.load_config_files(config_files_for(workflow, extra, method)))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("batch_size", 1, "BatchNorm cannot train on batches of one image"),
        ("num_members", 1, "A_intra and R_intra are a standard deviation"),
        ("image_size", 8, "an integer >= 16"),
        ("betas", [1.0, 0.5], "holds 1.0"),
        ("betas", [0.9], "has 1 values"),
        ("resume", "false", "passes `false` as text"),
        ("learning_rate", 0, "a number > 0"),
        ("threshold_specificity", 1.0, "out of range"),
        ("epochs", True, "True is not an integer"),
        ("salad_neighbours", [], "not a non-empty list"),
        ("backbone", "xyz", "one of 'ae', 'memae', 'aeu'"),
        ("learning_rate", float("nan"), "not a finite number"),
    ],
)
def test_out_of_range_values_are_refused_with_the_reason(key, value, message):
    with pytest.raises(ConfigValueError, match=key) as error:
        check_values({key: value})
    assert message in str(error.value)


def test_null_where_allowed_and_expressions_pass():
    check_values({"n_unlabeled": None, "anomaly_rate": None, "epochs": "$@other * 2", "batch_size": "@x"})
    with pytest.raises(ConfigValueError, match="'epochs': None"):
        check_values({"epochs": None})
    assert "n_unlabeled" in KEY_RULES


@pytest.mark.parametrize("override", [{"batch_size": "abc"}, {"backbone": "xyz"}, {"num_members": 1}])
def test_a_refused_run_creates_nothing(tmp_path, override):
    runs = tmp_path / "runs"
    with pytest.raises(ConfigValueError, match=next(iter(override))):
        run_workflow("training", {"runs_dir": str(runs), **override})
    assert not runs.exists()


def test_fit_refuses_a_bad_stage2_value_before_stage1_starts(tmp_path):
    from scripts.runtime.workflows import run_workflows

    runs = tmp_path / "runs"
    with pytest.raises(ConfigValueError, match="asr_epochs"):
        run_workflows(["training", "training_asr"], {"runs_dir": str(runs), "asr_epochs": "abc"})
    assert not runs.exists()


def test_plain_monai_bundle_run_refuses_in_one_line_with_status_2(tmp_path):
    files = config_files_for("training")
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files)]
    command += ["--batch_size", "abc", "--runs_dir", str(tmp_path / "runs")]
    env = dict(os.environ, PYTHONPATH=str(BUNDLE_ROOT))
    done = subprocess.run(command, cwd=BUNDLE_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: config key 'batch_size': 'abc' is not an integer")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
