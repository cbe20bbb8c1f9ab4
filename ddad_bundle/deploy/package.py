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
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = Path(__file__).resolve().parent
COPIED = ("__init__.py", "deploy", "scripts", "configs")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddad_bundle.deploy.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="new folder for the staged application")
    parser.add_argument("--model", default="runs/demo/cxr_phantom_ae/models/model.ts", help="model.ts for the printed command")
    parser.add_argument("--tag", default="ddad-cxr:0.4.0", help="image tag for the printed command")
    args = parser.parse_args(argv)
    out = stage_app(args.out)
    print(f"staged the application in {out}; package it with:\n"
          f"  monai-deploy package {out} -c {out / 'app.yaml'} -m {args.model} -t {args.tag} --platform x86_64")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
