"""Every benchmark script answers --help without running anything."""

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p for p in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py") if p.name != "common.py"
)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_answers_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(script), run_name="__main__")
        raise SystemExit(0)  # scripts that print their docstring and return
    assert stopped.value.code in (0, None)
    out = capsys.readouterr().out
    assert out.strip(), f"{script.name} --help printed nothing"
