"""Where the project keeps files it ships and files it builds once (tiny model, converted GGUF checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
DEMO_SFT_DATA = ASSETS_DIR / "demo_sft.jsonl"


def cache_dir() -> Path:
    """Built artefacts live here, like the HF cache; LLAMA2_ALIGN_CACHE moves it (documented in the README)."""
    return Path(os.environ.get("LLAMA2_ALIGN_CACHE", Path.home() / ".cache" / "llama2-align")).expanduser()
