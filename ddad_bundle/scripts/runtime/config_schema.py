"""The type and range of every numeric, boolean, list and choice key, checked before a run starts.

A value given on the command line arrives as whatever the parser made of it: ``--batch_size abc``
is the text 'abc', and ``python -m monai.bundle run ... --resume false`` is the text 'false',
which Python treats as true. Without a check, the first is a ``TypeError`` deep in a data loader
and the second silently does the opposite of what was asked. ``check_values`` looks at every key
that has a rule here (``KEY_RULES``) and raises ``ConfigValueError`` naming the key, the value and
what it must be; ``config_guard.record_run`` calls it in each workflow's ``initialize`` step,
before anything is written.

Values written as config expressions (``$...``, ``@...``, ``%...``) are the config author's and
are left to the code that uses them. ``tests/test_config_values.py`` checks that every literal
numeric, boolean or list key of the configs has a rule, so a new key cannot skip the check.

Example::

    >>> check_values({"batch_size": "abc"})
    Traceback (most recent call last):
    ConfigValueError: config key 'batch_size': 'abc' is not an integer; it must be an integer >= 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

EXPRESSION_PREFIXES = ("$", "@", "%")


class ConfigValueError(ValueError):
    """A config key holds a value of the wrong type or out of its range."""


@dataclass(frozen=True)
class Rule:
    """What a key may hold. ``kind``: 'int', 'number', 'bool', 'choice', 'ints' or 'numbers' (lists)."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    open_high: bool = False
    choices: tuple | None = None
    nullable: bool = False
    length: int | None = None  # for lists: exact length
    why: str = ""  # the reason for a bound, shown in the error

    def describe(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            item = "an integer" if self.kind in ("int", "ints") else "a number"
            text = item + self._bounds()
            if self.kind in ("ints", "numbers"):
                size = f"{self.length} " if self.length else "a non-empty list of "
                text = f"a list of {size}values, each {text}" if self.length else f"{size}values, each {text}"
        if self.nullable:
            text += " (or null)"
        return text + (f" ({self.why})" if self.why else "")

    def _bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {self.high:g}")
        return (" " + " and ".join(parts)) if parts else ""


def integer(low=None, high=None, **kw) -> Rule:
    return Rule("int", low, high, **kw)


def number(low=None, high=None, **kw) -> Rule:
    return Rule("number", low, high, **kw)


def boolean(**kw) -> Rule:
    return Rule("bool", **kw)


def choice(*choices, **kw) -> Rule:
    return Rule("choice", choices=tuple(choices), **kw)


def integers(low=None, high=None, **kw) -> Rule:
    return Rule("ints", low, high, **kw)


def numbers(low=None, high=None, **kw) -> Rule:
    return Rule("numbers", low, high, **kw)


FRACTION = number(0, 1)
ADAM_BETAS = numbers(0, 1, open_high=True, length=2, why="Adam's betas: two decay rates in [0, 1)")

COMMON_RULES = {
    "seed": integer(0),
    "num_workers": integer(0),
    "image_size": integer(16),
    "channels": choice(1, 3),
    "min_image_size": integer(1, why="the short side, in pixels, below which the reader refuses an image"),
    "latent_size": integer(1),
    "num_members": integer(2, why="A_intra and R_intra are a standard deviation over the K members, K - 1 divisor"),
    "entropy_weight": number(0),
    "memory_slots": integer(1),
    "asr_width": integer(1),
    "threshold_specificity": number(0, 1, open_low=True, open_high=True),
    "val_fraction": number(0, 1, open_high=True),
    "phantom#n_normal": integer(2),
    "phantom#n_validation": integer(2),
    "phantom#n_unlabeled": integer(0),
    "phantom#anomaly_rate": FRACTION,
    "phantom#n_test_normal": integer(1),
    "phantom#n_test_abnormal": integer(1),
    "phantom#size": integer(16),
    "n_unlabeled": integer(0, nullable=True),
    "anomaly_rate": number(0, 1, nullable=True),
    "drop_duplicates": boolean(),
    "foreground_threshold": number(0, 1, open_high=True),
    "epochs": integer(1),
    "batch_size": integer(2, why="BatchNorm cannot train on batches of one image"),
    "learning_rate": number(0, open_low=True),
    "betas": ADAM_BETAS,
    "threads": integer(0),
    "fused_adam": boolean(),
    "save_every": integer(1),
    "resume": boolean(),
    "progress_bar": boolean(),
    "dist_timeout_minutes": number(0, open_low=True),
    "train#trainer#one_loop_per_module": boolean(),
    "eval_batch_size": integer(1),
    "n_bootstrap": integer(0),
    "overwrite": boolean(),
    "inference_batch_size": integer(1),
    "deploy_has_udm": boolean(),
    "secondary_capture_identifiers": boolean(),
}
DDAD_RULES = {
    "asr_epochs": integer(1),
    "asr_batch_size": integer(2, why="BatchNorm cannot train on batches of one image"),
    "asr_learning_rate": number(0, open_low=True),
    "asr_weight_decay": number(0),
    "asr_betas": ADAM_BETAS,
    "asr_val_every": integer(1),
    "synthesis_prob": FRACTION,
}
SALAD_RULES = {
    "salad_embedding_size": integer(1),
    "salad_channels": integers(1, length=6, why="the paper's 6 encoder layers"),
    "salad_negative_slope": number(0),
    "salad_lr": number(0, open_low=True),
    "salad_betas": ADAM_BETAS,
    "salad_tau": number(0, open_low=True),
    "salad_weight": number(0),
    "salad_memory_momentum": number(0, 1),
    "salad_views": integer(1),
    "salad_pretrain_epochs": integer(0),
    "salad_round_epochs": integer(0),
    "salad_neighbours": integers(1),
    "salad_prototype_fractions": numbers(0, 1, open_low=True),
    "salad_k": integer(1),
}
KEY_RULES: dict[str, Rule] = {**COMMON_RULES, **DDAD_RULES, **SALAD_RULES}


def choice_rules() -> dict[str, Rule]:
    """Keys whose value is one of a module's names (imported here, so the lists live in one place)."""
    from ..engines.ensemble import ENSEMBLE_MODES, LR_SCHEDULES
    from ..engines.refinement import ASR_TARGETS, SELECTION_METRICS
    from ..networks.backbones import BACKBONES
    from ..scoring.salad import SCORE_MODES
    from ..scoring.salad_pipeline import BANK_SOURCES, SCORE_BANKS
    from .workflows import METHOD_CONFIGS

    return {
        "method": choice(*METHOD_CONFIGS),
        "modality": choice("cxr", "brain", "fundus"),
        "backbone": choice(*BACKBONES),
        "lr_schedule": choice(*LR_SCHEDULES),
        "ensemble_mode": choice(*ENSEMBLE_MODES),
        "selection_metric": choice(*SELECTION_METRICS),
        "asr_target": choice(*ASR_TARGETS),
        "salad_score_mode": choice(*SCORE_MODES),
        "salad_score_bank": choice(*SCORE_BANKS),
        "salad_bank_source": choice(*BANK_SOURCES),
    }


def all_rules() -> dict[str, Rule]:
    return {**KEY_RULES, **choice_rules()}


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _in_range(value: float, rule: Rule) -> bool:
    if rule.low is not None and (value <= rule.low if rule.open_low else value < rule.low):
        return False
    return rule.high is None or (value < rule.high if rule.open_high else value <= rule.high)


def _type_problem(value: Any, rule: Rule) -> str | None:
    """Why ``value`` does not fit ``rule``, or None."""
    scalar: Callable[[Any], bool] = _is_integer if rule.kind in ("int", "ints") else _is_number
    if rule.kind == "bool":
        if isinstance(value, bool):
            return None
        hint = (
            " (write True or False: `python -m monai.bundle run` passes `false` as text)"
            if isinstance(value, str)
            else ""
        )
        return f"{value!r} is not a boolean{hint}"
    if rule.kind == "choice":
        return None if value in rule.choices else f"{value!r} is not a known value"
    if rule.kind in ("int", "number"):
        if not scalar(value):
            return f"{value!r} is not {'an integer' if rule.kind == 'int' else 'a finite number'}"
        return None if _in_range(value, rule) else f"{value!r} is out of range"
    if not isinstance(value, (list, tuple)) or not value:
        return f"{value!r} is not a non-empty list"
    if rule.length is not None and len(value) != rule.length:
        return f"{list(value)!r} has {len(value)} values"
    bad = [v for v in value if not scalar(v) or not _in_range(v, rule)]
    return f"{list(value)!r} holds {bad[0]!r}" if bad else None


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Raise ``ConfigValueError`` naming ``key`` when ``value`` does not fit ``rule``."""
    if value is None and rule.nullable:
        return
    if isinstance(value, str) and value.startswith(EXPRESSION_PREFIXES):
        return  # an expression: the config author's, checked where it is used
    problem = _type_problem(value, rule)
    if problem:
        raise ConfigValueError(f"config key {key!r}: {problem}; it must be {rule.describe()}")


def lookup(config: Mapping, key: str) -> tuple[bool, Any]:
    """(found, raw value) of a '#'-separated key in a nested config."""
    node: Any = config
    for part in key.split("#"):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_values(config: Mapping, rules: Mapping[str, Rule] | None = None) -> None:
    """Check every key of ``config`` (raw, before evaluation) that has a rule."""
    for key, rule in (rules if rules is not None else all_rules()).items():
        found, value = lookup(config, key)
        if found:
            check_value(key, value, rule)
