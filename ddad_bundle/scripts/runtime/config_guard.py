"""Guards for bundle runs: refuse mistyped override keys, and record what a run was made with.

``python -m monai.bundle run`` adds any ``--key value`` it is given to the config, so a typo such
as ``--epoch 5`` (for ``--epochs``) would silently train the default schedule. The configs'
``initialize`` step calls ``record_run``, which checks every override key against the keys the
config files define (failing with the closest valid name when one is unknown) and every key's
type and range (``config_schema``), takes the output folder's lock (``locks``), and writes
``run_record.json`` beside the run's outputs: the merged config with overrides (before
evaluation), the seed, the command line and the package versions.

Where the invocation comes from: ``python -m ddad_bundle`` and the tests register it with
``set_invocation``; a plain ``python -m monai.bundle run ...`` is read from ``sys.argv``.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

from monai.bundle import ConfigParser

from .config_schema import ConfigValueError, check_values
from .files import write_json_atomic
from .locks import OutputFolderError, RunLockedError, acquire_run_lock

# Arguments of monai.bundle's ``run`` that are not config overrides.
_RUN_ARGUMENTS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}
_invocation: dict | None = None


class ConfigKeyError(KeyError):
    """An override names a key that no config file defines."""

    def __str__(self) -> str:
        return str(self.args[0])


def set_invocation(config_files, overrides: dict) -> None:
    """Register the config files and overrides of an in-process run (CLI wrapper, tests)."""
    global _invocation
    _invocation = {"config_files": _as_list(config_files), "overrides": dict(overrides)}


def clear_invocation() -> None:
    global _invocation
    _invocation = None


def _as_list(config_files) -> list[str]:
    if isinstance(config_files, (list, tuple)):
        return [str(f) for f in config_files]
    text = str(config_files).strip()
    if text.startswith("["):
        return [str(f) for f in json.loads(text.replace("'", '"'))]
    return [f.strip() for f in text.split(",")] if "," in text else [text]


def _literal_or_text(text: str):
    """``text`` as a Python literal where it parses, else the text itself (python-fire's reading)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(text: str):
    """Command-line values as Python literals where they parse (numbers, booleans, lists), else strings."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return _literal_or_text(text)


def parse_overrides(tokens: list[str], literal: bool = True) -> dict:
    """``--key value`` / ``--key=value`` pairs as a dict; ``literal``: values through ``parse_value``."""
    overrides, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}: overrides are written --key value")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ValueError(f"override --{key} has no value")
            value, i = tokens[i + 1], i + 1
        overrides[key] = parse_value(value) if literal else value
        i += 1
    return overrides


def parse_run_argv(argv: list[str]) -> dict | None:
    """Config files and overrides of a ``python -m monai.bundle run <workflow> ...`` command line,
    or None for another command line (or one ``parse_overrides`` cannot read)."""
    if not argv or "monai" not in argv[0].replace("\\", "/") or "run" not in argv[1:2]:
        return None
    args = argv[2:]
    while args and not args[0].startswith("--"):  # the run id, given positionally
        args = args[1:]
    try:
        overrides = parse_overrides(args, literal=False)
    except ValueError:
        return None
    config_files = overrides.pop("config_file", None)
    # Values as monai.bundle's command line (python-fire) passes them on: Python literals where
    # they parse ('16' -> 16, 'True' -> True), text otherwise ('false' stays the text 'false').
    overrides = {k: _literal_or_text(v) for k, v in overrides.items() if k not in _RUN_ARGUMENTS}
    return {"config_files": _as_list(config_files) if config_files else [], "overrides": overrides}


def current_invocation() -> dict | None:
    return _invocation or parse_run_argv(sys.argv)


def _flat_keys(config, prefix: str = "") -> list[str]:
    keys = []
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    for key, value in items:
        name = f"{prefix}{key}"
        keys.append(name)
        keys.extend(_flat_keys(value, name + "#"))
    return keys


def known_keys(config_files) -> set[str]:
    """Every key, nested ones as 'a#b', that the merged config files define."""
    return set(_flat_keys(ConfigParser.load_config_files(config_files)))


def check_overrides(config_files, overrides, config: dict | None = None) -> None:
    """Raise ``ConfigKeyError`` for an override key that the merged config files do not define.

    ``config``: the merged files when the caller has loaded them already.
    """
    merged = config if config is not None else ConfigParser.load_config_files(config_files)
    known = sorted(_flat_keys(merged))
    for key in overrides:
        normalized = str(key).replace("::", "#")
        if normalized not in known:
            close = difflib.get_close_matches(normalized, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigKeyError(
                f"unknown config key {key!r} given on the command line: no config file defines it{hint} "
                f"(config files: {', '.join(str(f) for f in config_files)})"
            )


def package_versions() -> dict:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "pydicom", "scikit-learn"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _is_main_process() -> bool:
    """Rank 0 under torchrun (which sets RANK), or a plain process: the one that locks and records."""
    return int(os.environ.get("RANK", "0")) == 0


def record_run(output_dir, seed: int, workflow: str = "") -> Path | None:
    """Check the override keys and every key's type and range, take the output folder's lock, then
    write ``run_record.json`` in ``output_dir``; returns its path (None on the other torchrun ranks).

    Nothing is created before the checks pass. Under a plain ``python -m monai.bundle run`` a refusal
    is one line on stderr and exit status 2, as with ``python -m ddad_bundle``; in-process callers
    (the CLI, the experiments, the tests) get the exception.
    """
    try:
        return _record_run(output_dir, seed, workflow)
    except (ConfigKeyError, ConfigValueError, RunLockedError, OutputFolderError) as error:
        if _invocation is not None:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def check_run() -> None:
    """The checks of ``record_run`` alone, writing nothing: for an ``initialize`` step whose
    earlier items would otherwise act on an unchecked value."""
    try:
        _checked_config(current_invocation())
    except (ConfigKeyError, ConfigValueError) as error:
        if _invocation is not None:
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def _checked_config(invocation: dict | None) -> dict | None:
    """The merged config with the overrides applied, after the key and value checks (None: no invocation)."""
    if not (invocation and invocation["config_files"]):
        return None
    merged = ConfigParser.load_config_files(invocation["config_files"])
    check_overrides(invocation["config_files"], invocation["overrides"], merged)
    parser = ConfigParser(merged)
    parser.update(invocation["overrides"])
    check_values(parser.get())
    return parser.get()


def _record_run(output_dir, seed: int, workflow: str) -> Path | None:
    invocation = current_invocation()
    record = {
        "workflow": workflow,
        "seed": int(seed),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": shlex.join(sys.argv),
        "versions": package_versions(),
    }
    config = _checked_config(invocation)
    if config is not None:
        record.update(
            config_files=[str(Path(f).resolve()) for f in invocation["config_files"]],
            overrides=invocation["overrides"],
            config=config,
        )
    if not _is_main_process():
        return None
    acquire_run_lock(output_dir, workflow)
    path = Path(output_dir) / f"run_record{'_' + workflow if workflow else ''}.json"
    return write_json_atomic(record, path, default=str)


def check_workflow_values(config_files, overrides: dict) -> None:
    """``check_values`` on the merged ``config_files`` with those ``overrides`` they define."""
    merged = ConfigParser.load_config_files(config_files)
    known = set(_flat_keys(merged))
    parser = ConfigParser(merged)
    parser.update({k: v for k, v in overrides.items() if str(k).replace("::", "#") in known})
    check_values(parser.get())
