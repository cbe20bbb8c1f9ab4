"""Stage a self-contained application folder for ``monai-deploy package``.

The packager copies one folder into the MONAI Application Package (MAP) image and runs its
``__main__.py``. The app needs the bundle's own code (``scripts``) and configs beside it, so this
command assembles that folder::

    python -m ddad_bundle.deploy.package --out build/ddad_app

    build/ddad_app/
        __main__.py          runs ddad_bundle.deploy.app
        app.yaml             the MAP manifest (resources, I/O formats)
        requirements.txt     installed into the image
        ddad_bundle/         __init__.py, deploy/, scripts/, configs/ (no models, no runs)

and prints the ``monai-deploy package`` command to run next (Docker needed; see docs/deploy.md).
The model is not copied here: the packager takes it with ``--models path/to/model.ts``.

``requirements.txt`` is derived from the repository's ``pyproject.toml`` (the dependencies and the
``deploy`` extra, less what the image does not run)::

    python -m ddad_bundle.deploy.package --write_requirements
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from ddad_bundle import __version__

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = Path(__file__).resolve().parent
COPIED = ("__init__.py", "deploy", "scripts", "configs")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
PYPROJECT = BUNDLE_ROOT.parent / "pyproject.toml"  # in a source checkout; a downloaded bundle has none
# Declared packages the application image does not need, and why.
NOT_IN_IMAGE = {
    "fire": "the monai.bundle command line, which the application does not use",
    "jsonschema": "metadata verification, done before packaging",
    "holoscan-cli": "the packaging tool itself, run on the build machine",
}

MAIN = '''"""MAP entry point: the DDAD Deploy application (staged by ddad_bundle.deploy.package)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddad_bundle.deploy.app import main  # noqa: E402

main()
'''


def stage_app(out_dir) -> Path:
    """Assemble the application folder (see the module docstring); returns its path."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder for the staged app")
    package = out_dir / "ddad_bundle"
    package.mkdir(parents=True)
    for name in COPIED:
        source = BUNDLE_ROOT / name
        if source.is_dir():
            shutil.copytree(source, package / name, ignore=IGNORED)
        else:
            shutil.copy2(source, package / name)
    shutil.copy2(DEPLOY_DIR / "app.yaml", out_dir / "app.yaml")
    shutil.copy2(DEPLOY_DIR / "requirements.txt", out_dir / "requirements.txt")
    (out_dir / "__main__.py").write_text(MAIN)
    return out_dir


def image_requirements(pyproject=PYPROJECT) -> str:
    """``requirements.txt`` for the image: pyproject's dependencies and ``deploy`` extra, in that order."""
    import tomllib  # Python 3.11+; only the repository's maintainers regenerate the file

    project = tomllib.loads(Path(pyproject).read_text())["project"]
    lines = []
    for spec in project["dependencies"] + project["optional-dependencies"]["deploy"]:
        name = re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0]
        if name not in NOT_IN_IMAGE and spec not in lines:
            lines.append(spec)
    header = (
        "# Installed into the MONAI Application Package image by `monai-deploy package`.\n"
        "# Generated from pyproject.toml: python -m ddad_bundle.deploy.package --write_requirements\n"
    )
    return header + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddad_bundle.deploy.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="new folder for the staged application")
    parser.add_argument(
        "--write_requirements",
        action="store_true",
        help="regenerate deploy/requirements.txt from pyproject.toml and stop",
    )
    parser.add_argument(
        "--model", default="runs/demo/cxr_phantom_ae/models/model.ts", help="model.ts for the printed command"
    )
    parser.add_argument("--tag", default=f"ddad-cxr:{__version__}", help="image tag for the printed command")
    args = parser.parse_args(argv)
    if args.write_requirements:
        (DEPLOY_DIR / "requirements.txt").write_text(image_requirements())
        print(f"wrote {DEPLOY_DIR / 'requirements.txt'} from {PYPROJECT}")
        return 0
    if not args.out:
        parser.error("--out is required")
    out = stage_app(args.out)
    print(
        f"staged the application in {out}; package it with:\n"
        f"  monai-deploy package {out} -c {out / 'app.yaml'} -m {args.model} -t {args.tag} --platform x86_64"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
