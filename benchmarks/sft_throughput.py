"""SFT training throughput: packing (TRL best-fit + padding-free collator) vs padding, fp32 vs bf16 autocast.

    python benchmarks/sft_throughput.py [--demo_dir runs/smollm2/sft] [--write]

One training step is what SFTTrainer runs: a batch from TRL's own data path (`pack_dataset(..., "bfd")` and
`DataCollatorForLanguageModeling(padding_free=True)`, or the padding collator), forward, backward and an AdamW
step. Both modes train on the same demonstrations in each step, so their tokens/s compare the same work.
Reported: non-pad tokens/s (real tokens), loss tokens/s (answer tokens, the ones SFT trains on) and total
tokens/s (padding included), and model-FLOPs utilisation: 6 x params x non-pad tokens/s over this machine's
matmul peak for the same dtype and thread count (`benchmarks/common.measure_matmul_peak`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.chat import encode_prompt  # noqa: E402
from alignment.data import load_dialogs  # noqa: E402
from alignment.models import load_causal_lm, load_tokenizer  # noqa: E402
from alignment.paths import DEMO_SFT_DATA  # noqa: E402
from benchmarks.common import (  # noqa: E402
    best,
    machine_description,
    markdown_table,
    measure_matmul_peak,
    write_section,
)
from rlhf.sampling import HFSamplingEngine, SamplingParams  # noqa: E402

# (model, packs per step, pack length, timed steps): per step about what the presets train on.
MODELS = [("builtin:tiny-llama", 4, 256, 5), ("builtin:smollm2-135m-instruct", 1, 256, 2)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_flops_params(model) -> int:
    """Parameters that do matmul work per token: the input embedding is a lookup unless tied to the head."""
    total = sum(p.numel() for p in model.parameters())
    if model.config.tie_word_embeddings:
        return total
    return total - model.get_input_embeddings().weight.numel()


def step_batches(tokenizer, dialogs, packs_per_step: int, max_length: int):
    """(packed batch, padded batch) holding the same examples: one step of each mode."""
    # trl (and sft.trainer, built on it) stay lazy: the GPU check imports this script's helpers without trl.
    from trl.data_utils import pack_dataset  # noqa: PLC0415
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling  # noqa: PLC0415

    from sft.trainer import tokenize_dialogs  # noqa: PLC0415

    rows = tokenize_dialogs(dialogs, tokenizer, "llama2")
    packs = pack_dataset(rows.select_columns(["input_ids", "labels"]), max_length, "bfd")
    chosen = [packs[i] for i in range(packs_per_step)]
    packed = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(chosen)
    examples = []
    for pack in chosen:
        offset = 0
        for n in pack["seq_lengths"]:
            examples.append(
                {"input_ids": pack["input_ids"][offset : offset + n], "labels": pack["labels"][offset : offset + n]}
            )
            offset += n
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    return packed, padded, len(examples)


def token_counts(batch) -> dict:
    if "attention_mask" in batch:
        real = int(batch["attention_mask"].sum())
    else:
        real = batch["input_ids"].numel()
    return {"total": batch["input_ids"].numel(), "real": real, "loss": int((batch["labels"] != -100).sum())}


def time_steps(model, batch, dtype, steps: int) -> float:
    """Best seconds of one forward/backward/AdamW step, after one untimed warm-up step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "attention_mask", "position_ids")}
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    return best(times)


def run_benchmark() -> tuple[list[list], dict, list[list]]:
    dialogs = load_dialogs(str(DEMO_SFT_DATA))
    peaks = {name: measure_matmul_peak(dtype) for name, dtype in DTYPES.items()}
    rows = []
    for name, packs_per_step, max_length, steps in MODELS:
        tokenizer = load_tokenizer(name)
        model = load_causal_lm(name).train()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        n_params = model_flops_params(model)
        packed, padded, n_examples = step_batches(tokenizer, dialogs, packs_per_step, max_length)
        for dtype_name, dtype in DTYPES.items():
            for mode, batch in (("packed", packed), ("padded", padded)):
                model.load_state_dict(initial)
                seconds = time_steps(model, batch, dtype, steps)
                counts = token_counts(batch)
                real_per_s = counts["real"] / seconds
                rows.append(
                    [
                        name,
                        dtype_name,
                        mode,
                        n_examples,
                        "x".join(map(str, batch["input_ids"].shape)),
                        f"{seconds:.3f}",
                        f"{real_per_s:,.0f}",
                        f"{counts['loss'] / seconds:,.0f}",
                        f"{counts['total'] / seconds:,.0f}",
                        f"{100 * 6 * n_params * real_per_s / peaks[dtype_name]:.1f}%",
                    ]
                )
                print(" | ".join(map(str, rows[-1])), flush=True)
        del model
    # Threads on a shared machine: the tiny packed fp32 step with 1 thread vs all cores.
    threads = []
    tokenizer = load_tokenizer("builtin:tiny-llama")
    model = load_causal_lm("builtin:tiny-llama").train()
    packed, _, _ = step_batches(tokenizer, dialogs, 4, 256)
    before = torch.get_num_threads()
    for n in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(n)
        threads.append([n, f"{time_steps(model, packed, torch.float32, 5):.3f}"])
        print("threads", threads[-1], flush=True)
    torch.set_num_threads(before)
    return rows, peaks, threads


def demo_answers(demo_dir: str, n: int = 3) -> list[tuple[str, str, str]]:
    """(held-out prompt, reference answer, tuned model's greedy answer) for the first n held-out dialogs."""
    held_out = [json.loads(line)["messages"] for line in Path(demo_dir, "held_out.jsonl").read_text().splitlines()]
    config = json.loads(Path(demo_dir, "stage_complete.json").read_text())["config"]
    tokenizer, model = load_tokenizer(demo_dir), load_causal_lm(demo_dir)
    chosen = [d for d in held_out if len(d) == 2][:n]
    prompts = [encode_prompt(tokenizer, d[:1], config["chat_format"]) for d in chosen]
    samples = HFSamplingEngine(model, tokenizer).generate(prompts, SamplingParams(temperature=0, max_new_tokens=48))
    return [
        (d[0]["content"], d[1]["content"], s.text + ("" if s.finished else " [no stop token]"))
        for d, s in zip(chosen, samples)
    ]


def ratios(rows: list[list]) -> str:
    """packed / padded per model and dtype, and bf16 / fp32 per model and batch mode."""
    speed = {(r[0], r[1], r[2]): float(r[6].replace(",", "")) for r in rows}
    parts = []
    for model in dict.fromkeys(r[0] for r in rows):
        short = model.removeprefix("builtin:")
        parts += [
            f"{short} {d} packed/padded {speed[model, d, 'packed'] / speed[model, d, 'padded']:.2f}x" for d in DTYPES
        ]
        parts += [
            f"{short} {m} bf16/fp32 {speed[model, 'bf16', m] / speed[model, 'fp32', m]:.2f}x"
            for m in ("packed", "padded")
        ]
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_dir", default=None, help="An output dir of recipes/sft.py: show its held-out answers.")
    parser.add_argument("--write", action="store_true", help="Write the results into BENCHMARKS.md, section 'SFT'.")
    args = parser.parse_args()

    started = time.time()
    rows, peaks, threads = run_benchmark()
    demo = demo_answers(args.demo_dir) if args.demo_dir else []
    command = (
        "python benchmarks/sft_throughput.py"
        + (f" --demo_dir {args.demo_dir}" if args.demo_dir else "")
        + (" --write" if args.write else "")
    )
    body = [
        f"Command: `{command}` ({time.time() - started:.0f} s; {machine_description()}).",
        "",
        f"Matmul peak (1024^3 matmuls, best of 5): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 autocast {peaks['bf16'] / 1e9:.1f} GFLOP/s.",
        "",
        "One step = forward + backward + AdamW on the same demonstrations, either best-fit packed (TRL "
        "`pack_dataset` bfd, padding-free collator) or padded (TRL collator); best of the timed steps. "
        "MFU = 6 x params (input embedding excluded unless tied) x non-pad tokens/s / matmul peak of that dtype.",
        "",
        markdown_table(
            [
                "model",
                "dtype",
                "batch",
                "examples",
                "input shape",
                "s/step",
                "non-pad tok/s",
                "loss tok/s",
                "total tok/s",
                "MFU",
            ],
            rows,
        ),
        "",
        "Ratios in this run (non-pad tokens/s): " + ratios(rows) + ".",
        "",
        "Threads (tiny-llama, packed fp32 step, best of 5): "
        + ", ".join(f"{n} thread(s) {s} s" for n, s in threads)
        + ".",
    ]
    if demo:
        body += [
            "",
            f"### Demo: `recipes/smollm2/sft.yaml`, held-out prompts ({args.demo_dir})",
            "",
            markdown_table(
                ["held-out prompt", "reference answer", "tuned model (greedy)"], [[p, r, a] for p, r, a in demo]
            ),
        ]
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section("SFT", text)


if __name__ == "__main__":
    main()
