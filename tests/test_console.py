"""The ``ddad`` console command: entry point, subcommands, and --help with every config key's default."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import BUNDLE_ROOT, REPO_ROOT
from ddad_bundle.cli import main

CONSOLE_SCRIPT = Path(sys.executable).with_name("ddad")
SUBCOMMANDS = ("run", "fit", "score", "demo", "export", "experiment")


def help_text(capsys, *argv) -> str:
    try:
        assert main(list(argv)) == 0
    except SystemExit as done:  # argparse's own --help exits
        assert done.code == 0
    return capsys.readouterr().out


def default_of(text: str, key: str) -> str:
    found = re.search(rf"^  {re.escape(key)} +(.+)$", text, re.M)
    assert found, f"{key} not listed"
    return found.group(1)


def test_pyproject_declares_the_console_command():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["ddad"] == "ddad_bundle.cli:main"


def test_top_level_help_lists_every_subcommand(capsys):
    text = help_text(capsys, "--help")
    assert text.startswith("usage: ddad")
    for name in SUBCOMMANDS:
        assert re.search(rf"^    {name} ", text, re.M), name


def test_fit_help_lists_the_keys_of_all_three_workflows_with_defaults(capsys):
    text = help_text(capsys, "fit", "--help")
    assert default_of(text, "epochs") == "250" and default_of(text, "asr_epochs") == "100"
    assert default_of(text, "n_bootstrap") == "1000" and default_of(text, "phantom#n_normal") == "400"
    assert "output_dir" in text.split("computed from other keys")[1]


def test_run_help_is_per_workflow_and_follows_extra_config_files(capsys, tmp_path):
    training = help_text(capsys, "run", "training", "--help")
    assert default_of(training, "epochs") == "250" and "asr_epochs" not in training
    extra = tmp_path / "mine.json"
    extra.write_text('{"epochs": 7, "my_key": "x"}')
    changed = help_text(capsys, "run", "training", "--config_file", str(extra), "--help")
    assert default_of(changed, "epochs") == "7" and default_of(changed, "my_key") == '"x"'
    rsna = help_text(capsys, "fit", "--config_file", str(BUNDLE_ROOT / "configs" / "datasets" / "rsna.json"), "-h")
    assert default_of(rsna, "n_unlabeled") == "4000" and default_of(rsna, "dataset") == '"rsna"'


def test_score_export_and_demo_help(capsys):
    score = help_text(capsys, "score", "--help")
    assert "--out OUT" in score and "config keys" in score and "inference.json" in score
    export = help_text(capsys, "export", "--help")
    assert "export.json" in export
    demo = help_text(capsys, "demo", "--help")
    assert "(default: cxr)" in demo and "(default: runs/demo)" in demo


@pytest.mark.skipif(
    not CONSOLE_SCRIPT.is_file(),
    reason=f"no {CONSOLE_SCRIPT}: the package was installed before "
    "the console entry existed (pip install -e . adds it)",
)
def test_the_installed_command_and_the_module_alias_agree():
    plain = subprocess.run([str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, timeout=300)
    alias = subprocess.run(
        [sys.executable, "-m", "ddad_bundle", "--help"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert plain.returncode == alias.returncode == 0 and plain.stdout == alias.stdout
    assert all(name in plain.stdout for name in SUBCOMMANDS)


def test_fit_help_follows_the_method(capsys):
    salad = help_text(capsys, "fit", "--method", "salad", "--help")
    assert "salad_train.json" in salad and "salad_pretrain_epochs" in salad and "asr_epochs" not in salad
