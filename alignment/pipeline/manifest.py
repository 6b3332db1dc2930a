"""What the runner and the report share: a planned stage, and the run directory's manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"


@dataclass
class Stage:
    name: str  # e.g. "RLHF-V2/reward_safety"
    script: str  # file name in recipes/ (alignment.stages lists them)
    config: dict
    depends_on: list[str]
    version: str | None = None  # the model version this stage produces or judges, for the report

    @property
    def folder(self) -> str:
        return self.name

    def __post_init__(self) -> None:
        self.depends_on = list(dict.fromkeys(self.depends_on))


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.exists():
        return {"stages": {}}
    return json.loads(path.read_text())
