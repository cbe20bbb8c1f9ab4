"""The keys a command line may override, with their defaults, for ``ddad <command> --help``.

Every config key can be given as ``--key value``; this module lists them from the config files a
command merges (so the listing is always the configs' own, never a copy that drifts):

- settings: keys whose default is a literal (number, string, boolean, null, list of literals),
  nested ones as ``a#b`` (``phantom#n_normal``), with the default;
- computed keys: keys whose default is an expression of other keys (``output_dir``,
  ``split_file``, ``device``, ...), named only: they can be overridden too, but their default is
  code, not a value.

Component definitions (``_target_`` blocks), lists of expressions (``initialize``, the workflow
steps) and the ``imports`` are not settings and are left out.

Example::

    print(settings_help(["configs/common.json", "configs/train.json"]))
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from monai.bundle import ConfigParser

EXPRESSION_PREFIXES = ("$", "@", "%")
MAX_COMPUTED_LENGTH = 120  # longer expressions are internal wiring, not something a user sets
STEP_KEYS = {
    "imports",
    "initialize",
    "finalize",
    "run",
    "training",
    "training_asr",
    "evaluating",
    "inferring",
    "exporting",
}  # workflow steps: lists of expressions, not settings


def is_literal(value) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return not value.startswith(EXPRESSION_PREFIXES)
    if isinstance(value, list):
        return all(is_literal(v) for v in value)
    return False


def settings(config: dict, prefix: str = "") -> tuple[list[tuple[str, object]], list[str]]:
    """``([(key, literal default)], [computed keys])`` of a merged config, in file order."""
    literal, computed = [], []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if (not prefix and key in STEP_KEYS) or key.startswith("_"):
            continue
        if is_literal(value):
            literal.append((name, value))
        elif isinstance(value, str) and len(value) <= MAX_COMPUTED_LENGTH:
            computed.append(name)
        elif isinstance(value, dict) and "_target_" not in value:
            sub_literal, sub_computed = settings(value, name + "#")
            literal.extend(sub_literal)
            computed.extend(sub_computed)
    return literal, computed


def settings_help(config_files, width: int = 100) -> str:
    """The listing printed under a command's ``--help``."""
    merged = ConfigParser.load_config_files([str(f) for f in config_files])
    literal, computed = settings(merged)
    names = ", ".join(Path(f).name for f in config_files)
    lines = [f"config keys (--key value), with their defaults, from {names}:"]
    pad = max((len(k) for k, _ in literal), default=0) + 2
    for key, value in literal:
        lines.append(f"  {key:<{pad}}{json.dumps(value)}")
    if computed:
        lines.append("computed from other keys (may be given as well):")
        lines.extend(textwrap.wrap(", ".join(computed), width, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(lines)
