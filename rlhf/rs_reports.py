"""Rejection sampling's reports as JSON and PNG: reward against K (fig. 7) and against temperature (fig. 8)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from alignment.data import atomic_write_json


def _plot(path: Path, x: list, series: dict[str, list], xlabel: str, title: str, log_x: bool = False) -> None:
    # A bare Figure renders to files through Agg: no display and no global pyplot state on training machines.
    figure = Figure(figsize=(5, 3.5))
    axis = figure.subplots()
    for label, values in series.items():
        axis.plot(x, values, marker="o", label=label)
    if log_x:
        axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("reward R_c")
    axis.set_title(title)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    tmp.replace(path)


def write_reward_vs_k(output_dir: str | Path, curve: dict) -> None:
    output_dir = Path(output_dir)
    atomic_write_json(output_dir / "reward_vs_k.json", curve)
    if curve["k"]:
        _plot(
            output_dir / "reward_vs_k.png",
            curve["k"],
            {"max": curve["max"], "median": curve["median"]},
            "samples per prompt K",
            "Best-of-K: max vs median reward (fig. 7)",
            log_x=True,
        )


def write_reward_vs_temperature(output_dir: str | Path, sweep: dict) -> None:
    output_dir = Path(output_dir)
    atomic_write_json(output_dir / "reward_vs_temperature.json", sweep)
    if sweep["temperature"]:
        _plot(
            output_dir / "reward_vs_temperature.png",
            sweep["temperature"],
            {"max of K": sweep["max"], "median of K": sweep["median"]},
            "temperature T",
            "Reward against sampling temperature (fig. 8)",
        )
