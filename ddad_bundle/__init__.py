"""DDAD MONAI Bundle: dual-distribution discrepancy anomaly detection for medical images.

This folder is both a MONAI Bundle (``configs/``, ``scripts/``, ``models/``, ``docs/``) and an
importable package whose ``python -m ddad_bundle`` command wraps the bundle's workflows.
"""

from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parent
CONFIG_DIR = BUNDLE_ROOT / "configs"
__version__ = "0.3.0"
