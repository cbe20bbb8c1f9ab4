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

``run`` is ``python -m monai.bundle run`` with the bundle's config files filled in per workflow
(``scripts.runtime.workflows``),
the bundle root put on the import path (configs say ``$import scripts``) and every override key
checked against the configs before anything starts, so ``--epoch 5`` is refused with a hint
instead of being silently added. ``fit`` runs training, training_asr and evaluating in turn with the same settings (for example on
a folder tree of one's own images, see ``scripts.data.folders``). ``demo`` trains and evaluates on generated phantoms with a
shortened schedule (the ``configs/demo.json`` overlay) and prints the AUC/AP table and the path of ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ddad_bundle import BUNDLE_ROOT, CONFIG_DIR

# SALAD's demo schedule (the paper: 50 pre-training epochs, then 10 rounds of 50): measured in docs/salad.md.
DEMO_SALAD = {
    "image_size": 32,
    "salad_pretrain_epochs": 10,
    "salad_round_epochs": 4,
    "salad_neighbours": [2, 4, 6, 8, 10],
    "salad_prototype_fractions": [0.2, 0.4, 0.6, 0.8, 1.0],
    "progress_bar": False,
    "save_every": 5,
}


def ensure_bundle_on_path() -> None:
    """Put the bundle root on the import path: the configs say ``$import scripts``."""
    if str(BUNDLE_ROOT) not in sys.path:
        sys.path.insert(0, str(BUNDLE_ROOT))


def demo(args: argparse.Namespace) -> int:
    """Train both stages on generated phantoms with the demo schedule (configs/demo.json), then evaluate."""
    from scripts.runtime.workflows import DEMO_CONFIG, run_workflows

    if args.method == "salad":
        return demo_salad(args)
    overrides = dict(modality=args.modality, runs_dir=os.path.abspath(args.runs_dir))
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.asr_epochs is not None:
        overrides["asr_epochs"] = args.asr_epochs
    if args.modality == "fundus" and args.rgb:
        overrides["channels"] = 3
    start = time.time()
    stages = ["training", "evaluating"] if args.stage1_only else ["training", "training_asr", "evaluating"]
    run_workflows(stages, overrides, [DEMO_CONFIG])
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def demo_salad(args: argparse.Namespace) -> int:
    """SALAD on generated phantoms with its shortened demo schedule, then the evaluation."""
    from scripts.runtime.workflows import FIT_WORKFLOWS, run_workflows

    settings = dict(DEMO_SALAD, modality=args.modality, runs_dir=os.path.abspath(args.runs_dir))
    if args.epochs is not None:
        settings["salad_pretrain_epochs"] = args.epochs
    start = time.time()
    run_workflows(FIT_WORKFLOWS["salad"], settings, method="salad")
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def _add_method(parser: argparse.ArgumentParser) -> None:
    from scripts.runtime.workflows import METHOD_CONFIGS

    parser.add_argument(
        "--method", default="ddad", choices=sorted(METHOD_CONFIGS), help="ddad (default) or salad (docs/salad.md)"
    )


# Commands that take config keys (--key value); their --help lists those keys with the defaults of
# the config files the command merges (scripts.runtime.config_help).
KEYED_COMMANDS = {"fit": None, "score": ["inferring"], "export": ["exporting"]}  # fit: FIT_WORKFLOWS[method]
HELP_FLAGS = {"-h", "--help"}
KEYS_EPILOG = (
    "Any config key is an option too; --help lists them with their defaults (with --config_file FILE "
    "or --method salad before --help: those configs' keys)."
)


def _option(argv: list[str], name: str) -> list[str]:
    """Values of ``--name value`` / ``--name=value`` in argv (comma lists split)."""
    values = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == f"--{name}"]
    values += [token.split("=", 1)[1] for token in argv if token.startswith(f"--{name}=")]
    return [v for value in values for v in value.split(",")]


def keys_help(command: str, argv: list[str]) -> str:
    """The config keys of ``command`` (``run <workflow>``: that workflow's) for the files and method in argv."""
    ensure_bundle_on_path()
    from scripts.runtime.config_help import settings_help
    from scripts.runtime.workflows import FIT_WORKFLOWS, config_files_for

    method = (_option(argv, "method") or ["ddad"])[-1]
    workflows = [argv[1]] if command == "run" else KEYED_COMMANDS[command] or FIT_WORKFLOWS.get(method, [])
    extra = _option(argv, "config_file")
    files = list(dict.fromkeys(f for w in workflows for f in config_files_for(w, extra, method)))
    return settings_help(files)


def command_help(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Print a keyed command's help with its config keys; False when argv asks for no such help."""
    if not argv or not HELP_FLAGS & set(argv):
        return False
    from scripts.runtime.workflows import WORKFLOW_CONFIGS

    command = argv[0]
    if command not in KEYED_COMMANDS and not (command == "run" and len(argv) > 1 and argv[1] in WORKFLOW_CONFIGS):
        return False
    print(parser.command_parsers[command].format_help())
    print(keys_help(command, argv))
    return True


def build_parser() -> argparse.ArgumentParser:
    ensure_bundle_on_path()
    from scripts.runtime.workflows import DEMO_CONFIG, WORKFLOW_CONFIGS

    demo_schedule = json.loads(DEMO_CONFIG.read_text())
    parser = argparse.ArgumentParser(
        prog="ddad",
        description="DDAD anomaly detection bundle: the workflows as plain commands "
        "(`python -m ddad_bundle` is the same command). `ddad <command> --help` lists a command's options "
        "and config keys with their defaults.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    parser.command_parsers = {}

    def add(name, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        parser.command_parsers[name] = commands.add_parser(name, **kwargs)
        return parser.command_parsers[name]

    run_parser = add(
        "run",
        help="run one bundle workflow: " + ", ".join(WORKFLOW_CONFIGS),
        epilog="`ddad run <workflow> --help` lists that workflow's config keys with their defaults.",
    )
    run_parser.add_argument("workflow", choices=sorted(WORKFLOW_CONFIGS))
    run_parser.add_argument(
        "--config_file",
        action="append",
        default=[],
        help="extra config file(s) merged after the workflow's own (dataset configs...)",
    )
    _add_method(run_parser)
    export_parser = add(
        "export", help="write the trained pipeline as one TorchScript file (model.ts)", epilog=KEYS_EPILOG
    )
    _add_method(export_parser)
    # options are parsed by scripts.tools.experiments (its own --help), so this parser only names the command
    add(
        "experiment",
        add_help=False,
        help="the papers' experiments: ar_sweep (Fig. 5), backbones (Table 3); docs/experiments.md",
    )
    fit_parser = add(
        "fit", help="training, training_asr and evaluating in turn (SALAD: training and evaluating)", epilog=KEYS_EPILOG
    )
    fit_parser.add_argument(
        "--config_file",
        action="append",
        default=[],
        help="extra config file(s), e.g. ddad_bundle/configs/datasets/folder.json",
    )
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
    demo_parser.add_argument(
        "--epochs", type=int, default=None, help=f"stage-1 epochs (None: the demo schedule's {demo_schedule['epochs']})"
    )
    demo_parser.add_argument("--runs_dir", default="runs/demo", help="where the run folder goes")
    demo_parser.add_argument("--rgb", action="store_true", help="fundus only: train on RGB images")
    demo_parser.add_argument(
        "--asr_epochs",
        type=int,
        default=None,
        help=f"ASR-Net epochs (None: the demo schedule's {demo_schedule['asr_epochs']})",
    )
    demo_parser.add_argument("--stage1_only", action="store_true", help="skip the ASR-Net (stage 2)")
    _add_method(demo_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input (and a run folder another live run holds) ends with one clear line
    on stderr and exit status 2."""
    ensure_bundle_on_path()
    from scripts.runtime.locks import RunLockedError

    try:
        return dispatch(argv)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, RunLockedError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2


def dispatch(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if command_help(parser, argv):
        return 0
    args, rest = parser.parse_known_args(argv)
    from scripts.runtime.config_guard import parse_overrides
    from scripts.runtime.workflows import FIT_WORKFLOWS, run_workflow, run_workflows

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
        from scripts.tools import experiments

        return experiments.main(argv[argv.index("experiment") + 1 :])
    if args.command == "publish_metrics":
        from scripts.tools.publish import publish_eval_metrics, unreliable_scores

        published = publish_eval_metrics(args.metrics, args.metadata, args.name, args.scores)
        print(f"eval_metrics of {args.metadata}: {published}")
        with open(args.metrics) as metrics:
            left_out = unreliable_scores(json.load(metrics))
        if left_out and not args.scores:
            print(f"left out (no learned signal on the validation set): {', '.join(left_out)}")
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
