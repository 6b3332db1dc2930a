"""Shared benchmark helpers: the machine's matmul peak, timing, and BENCHMARKS.md sections.

Model-FLOPs utilisation (MFU) divides a stage's useful FLOP/s by what this machine's matmuls reach, measured
here with the same dtype and thread count, so a number means the same thing on a laptop and a GPU node.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from alignment.data import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"


def synchronize(device: str | torch.device = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Wall seconds of each of `repeats` calls after `warmup` untimed ones (device work included)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def best(times: list[float]) -> float:
    """The fastest run: on a shared machine the others are slowed by neighbours, not by the code."""
    return min(times)


def median(times: list[float]) -> float:
    return statistics.median(times)


def measure_matmul_peak(
    dtype: torch.dtype = torch.float32,
    size: int = 1024,
    repeats: int = 5,
    device: str = "cpu",
    seconds_per_run: float = 0.3,
) -> float:
    """FLOP/s of large square matmuls (2 n^3 each), best of `repeats` runs of about `seconds_per_run` each.

    bf16 is measured under CPU autocast, as training runs it (fp32 tensors cast per op), so MFU of an
    autocast run is against what autocast matmuls reach on this machine. On CUDA the tensors are bf16
    themselves: the tensor cores' rate, the usual MFU denominator (a per-call cast would add memory traffic).
    """
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    autocast = dtype != torch.float32 and torch.device(device).type == "cpu"
    if not autocast:
        a, b = a.to(dtype), b.to(dtype)

    def one():
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=autocast):
            return a @ b

    elapsed = best(time_call(one, repeats=2, warmup=1, device=device))
    calls = max(1, int(seconds_per_run / max(elapsed, 1e-6)))

    def run():
        for _ in range(calls):
            one()

    return 2 * size**3 * calls / best(time_call(run, repeats=repeats, warmup=0, device=device))


def machine_description() -> str:
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def write_section(title: str, body: str, path: str | Path = BENCHMARKS_MD) -> None:
    """Write or replace the `## {title}` section of BENCHMARKS.md, leaving every other section as it is."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section names the command that produced it.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, text)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
