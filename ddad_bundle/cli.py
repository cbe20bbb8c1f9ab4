"""``ddad`` (alias ``python -m ddad_bundle``): the bundle's workflows as plain commands.

Commands::

    python -m ddad_bundle run training   [--config_file a.json,b.json] [--key value ...]
    python -m ddad_bundle run evaluating [--key value ...]
    python -m ddad_bundle demo [--modality cxr|brain|fundus] [--epochs N] [--runs_dir runs/demo]
    python -m ddad_bundle score <folder or files> --out <folder> [--runs_dir runs/demo] [--key value ...]
    python -m ddad_bundle fit [--method ddad|salad] [--config_file configs/datasets/folder.json] [--key value ...]
    python -m ddad_bundle export [--runs_dir runs/demo] [--model_ts path/model.ts]
    python -m ddad_bundle experiment ar_sweep|backbones [--dataset phantom] [--seeds 0 1 2] [--out dir]
    python -m ddad_bundle publish_metrics <eval/metrics.json> --name demo_cxr_phantom [--scores A_inter R_dual]

``run`` is ``python -m monai.bundle run`` with the bundle's config files filled in per workflow,
the bundle root put on the import path (configs say ``$import scripts``) and every override key
checked against the configs before anything starts, so ``--epoch 5`` is refused with a hint
instead of being silently added. ``fit`` runs training, training_asr and evaluating in turn with the same settings (for example on
a folder tree of one's own images, see ``scripts.data.folders``). ``demo`` trains and evaluates on generated phantoms with a
shortened schedule and prints the AUC/AP table and the path of ``metrics.json``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from ddad_bundle import BUNDLE_ROOT, CONFIG_DIR

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
    "inferring": ["common.json", "salad_train.json", "salad_inference.json"],
    "exporting": ["common.json", "salad_train.json", "salad_inference.json", "salad_export.json"],
}
METHOD_CONFIGS = {"ddad": WORKFLOW_CONFIGS, "salad": SALAD_WORKFLOW_CONFIGS}
FIT_WORKFLOWS = {"ddad": ["training", "training_asr", "evaluating"], "salad": ["training", "evaluating"]}
# SALAD's demo schedule (the paper: 50 pre-training epochs, then 10 rounds of 50): measured in docs/salad.md.
DEMO_SALAD = {"image_size": 32, "salad_pretrain_epochs": 10, "salad_round_epochs": 4, "salad_neighbours": [2, 4, 6, 8, 10],
              "salad_prototype_fractions": [0.2, 0.4, 0.6, 0.8, 1.0], "progress_bar": False, "save_every": 5}

# The demo's shortened schedule, which fits a 2-core CPU in under 10 minutes (the paper: 250
# epochs at batch 64 with a constant rate, and 100 ASR-Net epochs). Smaller batches give the
# members more steps for the same compute, and the cosine decay lets them settle in a short run;
# 60 epochs is the shortest schedule at which R_dual measured above A_inter (30 and 50 did not).
# Checkpoints every 10 epochs: a 4.5 M-parameter member with its Adam state is 54 MB, and
# writing all six every epoch cost a tenth of the epoch. Each change is measured in docs/README.md.
DEMO_STAGE1 = {"epochs": 60, "batch_size": 16, "lr_schedule": "cosine", "progress_bar": False, "save_every": 10}
DEMO_ASR_EPOCHS = 8


def ensure_bundle_on_path() -> None:
    if str(BUNDLE_ROOT) not in sys.path:
        sys.path.insert(0, str(BUNDLE_ROOT))


def config_files_for(workflow: str, extra=None, method: str = "ddad") -> list[str]:
    if method not in METHOD_CONFIGS:
        raise SystemExit(f"unknown method {method!r}; choose one of {', '.join(METHOD_CONFIGS)}")
    workflows = METHOD_CONFIGS[method]
    if workflow not in workflows:
        raise SystemExit(f"unknown {method} workflow {workflow!r}; choose one of {', '.join(workflows)}")
    files = [str(CONFIG_DIR / name) for name in workflows[workflow]]
    return files + [str(Path(f).resolve()) for f in (extra or [])]


def parse_value(text: str):
    """Command-line values as Python literals where they parse (numbers, booleans, lists), else strings."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(tokens: list[str]) -> dict:
    overrides, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise SystemExit(f"unexpected argument {token!r}: overrides are written --key value")
        key, _, value = token[2:].partition("=")
        if not _:
            if i + 1 >= len(tokens):
                raise SystemExit(f"override --{key} has no value")
            value, i = tokens[i + 1], i + 1
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def run_workflow(workflow: str, overrides: dict | None = None, extra_configs=None, method: str = "ddad") -> None:
    """Run one bundle workflow of ``method`` in this process, after checking the override keys."""
    ensure_bundle_on_path()
    from monai.bundle import run

    from scripts.runtime import config_guard
    from scripts.data.cache import root_cause

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


def run_workflows(workflows: list[str], overrides: dict, extra_configs=None, method: str = "ddad") -> None:
    """Several workflows in turn with one set of overrides; each gets the keys its configs define.

    A key no workflow defines is refused before the first one starts.
    """
    ensure_bundle_on_path()
    from scripts.runtime import config_guard

    files = {w: config_files_for(w, extra_configs, method) for w in workflows}
    union = list(dict.fromkeys(f for w in workflows for f in files[w]))
    config_guard.check_overrides(union, overrides)
    for workflow in workflows:
        known = config_guard.known_keys(files[workflow])
        run_workflow(workflow, {k: v for k, v in overrides.items() if k.replace("::", "#") in known}, extra_configs,
                     method)


def demo(args: argparse.Namespace) -> int:
    """Train both stages on generated phantoms with the demo schedule, then evaluate."""
    if args.method == "salad":
        return demo_salad(args)
    stage1 = dict(DEMO_STAGE1, modality=args.modality, runs_dir=os.path.abspath(args.runs_dir))
    if args.epochs is not None:
        stage1["epochs"] = args.epochs
    if args.modality == "fundus" and args.rgb:
        stage1["channels"] = 3
    asr_epochs = DEMO_ASR_EPOCHS if args.asr_epochs is None else args.asr_epochs
    start = time.time()
    if args.stage1_only:  # no stage-2 config is loaded, so no stage-2 key may be passed
        run_workflows(["training", "evaluating"], stage1)
    else:
        run_workflows(["training", "training_asr", "evaluating"], dict(stage1, asr_epochs=asr_epochs))
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def demo_salad(args: argparse.Namespace) -> int:
    """SALAD on generated phantoms with its shortened demo schedule, then the evaluation."""
    settings = dict(DEMO_SALAD, modality=args.modality, runs_dir=os.path.abspath(args.runs_dir))
    if args.epochs is not None:
        settings["salad_pretrain_epochs"] = args.epochs
    start = time.time()
    run_workflows(FIT_WORKFLOWS["salad"], settings, method="salad")
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def _add_method(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="ddad", choices=sorted(METHOD_CONFIGS),
                        help="ddad (default) or salad (docs/salad.md)")


# Commands that take config keys (--key value); their --help lists those keys with the defaults of
# the config files the command merges (scripts.runtime.config_help).
KEYED_COMMANDS = {"fit": None, "score": ["inferring"], "export": ["exporting"]}  # fit: FIT_WORKFLOWS[method]
HELP_FLAGS = {"-h", "--help"}
KEYS_EPILOG = ("Any config key is an option too; --help lists them with their defaults (with --config_file FILE "
               "or --method salad before --help: those configs' keys).")


def _option(argv: list[str], name: str) -> list[str]:
    """Values of ``--name value`` / ``--name=value`` in argv (comma lists split)."""
    values = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == f"--{name}"]
    values += [token.split("=", 1)[1] for token in argv if token.startswith(f"--{name}=")]
    return [v for value in values for v in value.split(",")]


def keys_help(command: str, argv: list[str]) -> str:
    """The config keys of ``command`` (``run <workflow>``: that workflow's) for the files and method in argv."""
    ensure_bundle_on_path()
    from scripts.runtime.config_help import settings_help

    method = (_option(argv, "method") or ["ddad"])[-1]
    workflows = [argv[1]] if command == "run" else KEYED_COMMANDS[command] or FIT_WORKFLOWS.get(method, [])
    extra = _option(argv, "config_file")
    files = list(dict.fromkeys(f for w in workflows for f in config_files_for(w, extra, method)))
    return settings_help(files)


def command_help(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Print a keyed command's help with its config keys; False when argv asks for no such help."""
    if not argv or not HELP_FLAGS & set(argv):
        return False
    command = argv[0]
    if command not in KEYED_COMMANDS and not (command == "run" and len(argv) > 1 and argv[1] in WORKFLOW_CONFIGS):
        return False
    print(parser.command_parsers[command].format_help())
    print(keys_help(command, argv))
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddad", description="DDAD anomaly detection bundle: the workflows as plain commands "
        "(`python -m ddad_bundle` is the same command). `ddad <command> --help` lists a command's options "
        "and config keys with their defaults.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    parser.command_parsers = {}

    def add(name, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        parser.command_parsers[name] = commands.add_parser(name, **kwargs)
        return parser.command_parsers[name]

    run_parser = add("run", help="run one bundle workflow: " + ", ".join(WORKFLOW_CONFIGS),
                     epilog="`ddad run <workflow> --help` lists that workflow's config keys with their defaults.")
    run_parser.add_argument("workflow", choices=sorted(WORKFLOW_CONFIGS))
    run_parser.add_argument("--config_file", action="append", default=[],
                            help="extra config file(s) merged after the workflow's own (dataset configs...)")
    _add_method(run_parser)
    export_parser = add("export", help="write the trained pipeline as one TorchScript file (model.ts)",
                        epilog=KEYS_EPILOG)
    _add_method(export_parser)
    # options are parsed by scripts.tools.experiments (its own --help), so this parser only names the command
    add("experiment", add_help=False,
        help="the papers' experiments: ar_sweep (Fig. 5), backbones (Table 3); docs/experiments.md")
    fit_parser = add("fit", help="training, training_asr and evaluating in turn (SALAD: training and evaluating)",
                     epilog=KEYS_EPILOG)
    fit_parser.add_argument("--config_file", action="append", default=[],
                            help="extra config file(s), e.g. ddad_bundle/configs/datasets/folder.json")
    _add_method(fit_parser)
    score_parser = add("score", help="score new images with a trained bundle", epilog=KEYS_EPILOG)
    score_parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    score_parser.add_argument("--out", required=True, help="folder for maps, overlays, scores.csv, summary.json")
    _add_method(score_parser)
    publish_parser = add("publish_metrics", help="copy a run's AUCs into metadata.json's eval_metrics")
    publish_parser.add_argument("metrics", help="an evaluation's eval/metrics.json")
    publish_parser.add_argument("--name", required=True, help="entry prefix, e.g. demo_cxr_phantom")
    publish_parser.add_argument("--scores", nargs="+", default=None, help="scores to publish (default: all)")
    publish_parser.add_argument("--metadata", default=str(CONFIG_DIR / "metadata.json"))
    demo_parser = add("demo", help="train and evaluate on generated phantoms with the demo schedule")
    demo_parser.add_argument("--modality", default="cxr", choices=["cxr", "brain", "fundus"], help="phantom kind")
    demo_parser.add_argument("--epochs", type=int, default=None,
                             help=f"stage-1 epochs (None: the demo schedule's {DEMO_STAGE1['epochs']})")
    demo_parser.add_argument("--runs_dir", default="runs/demo", help="where the run folder goes")
    demo_parser.add_argument("--rgb", action="store_true", help="fundus only: train on RGB images")
    demo_parser.add_argument("--asr_epochs", type=int, default=None,
                             help=f"ASR-Net epochs (None: the demo schedule's {DEMO_ASR_EPOCHS})")
    demo_parser.add_argument("--stage1_only", action="store_true", help="skip the ASR-Net (stage 2)")
    _add_method(demo_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input ends with one clear line on stderr and exit status 2."""
    try:
        return dispatch(argv)
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2


def dispatch(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if command_help(parser, argv):
        return 0
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return demo(args)
    if args.command == "score":
        overrides = parse_overrides(rest)
        overrides.update(input_paths=[os.path.abspath(p) for p in args.inputs], inference_dir=os.path.abspath(args.out))
        run_workflow("inferring", overrides, method=args.method)
        return 0
    if args.command == "experiment":
        ensure_bundle_on_path()
        from scripts.tools import experiments

        return experiments.main(argv[argv.index("experiment") + 1:])
    if args.command == "publish_metrics":
        ensure_bundle_on_path()
        from scripts.tools.publish import publish_eval_metrics

        published = publish_eval_metrics(args.metrics, args.metadata, args.name, args.scores)
        print(f"eval_metrics of {args.metadata}: {published}")
        return 0
    if args.command == "export":
        run_workflow("exporting", parse_overrides(rest), method=args.method)
        return 0
    extra = [f for item in args.config_file for f in item.split(",")]
    overrides = parse_overrides(rest)
    if args.command == "fit":
        run_workflows(FIT_WORKFLOWS[args.method], overrides, extra, args.method)
    else:
        run_workflow(args.workflow, overrides, extra, args.method)
    return 0
