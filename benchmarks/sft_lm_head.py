"""SFT step time when few tokens carry loss: TRL's fused LM head on every position (its CPU default) against the
labelled positions only (what `sft.trainer` installs on CPU), same run, same rows.

    python benchmarks/sft_lm_head.py [--threads 2] [--rows 2] [--turns 11]

The rows are GAtt-shaped (arXiv 2307.09288, sec. 3.3): a multi-turn dialogue whose earlier answers carry no loss,
so only the last answer (about 5% of the tokens) is trained. One step is the SFT trainer's: forward with
`fused_lm_head=True`, the token-mean loss, backward, AdamW step. Reported: seconds per step (best of the timed
steps), the ratio, and MFU (6 x params x tokens / s over this machine's matmul peak, measured here with the same
dtype and threads: `benchmarks/common.measure_matmul_peak`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import trl.trainer.utils as trl_utils

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sft.trainer  # noqa: E402, F401  (installs the labelled-positions-only LM head on CPU)
from alignment.chat import IGNORE_INDEX, encode_dialog  # noqa: E402
from alignment.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from benchmarks.common import best, machine_description, markdown_table, measure_matmul_peak  # noqa: E402
from sft.gatt import load_user_dialogues, training_row  # noqa: E402

MODEL = "builtin:smollm2-135m-instruct"
DIALOGUES = Path(__file__).resolve().parent.parent / "data" / "gatt-truthfulqa" / "eval.jsonl"
ANSWER = "Ahoy! That is a common question, and the short answer is that it depends on the details you give."


def gatt_rows(tokenizer, rows: int, turns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded input_ids and labels of `rows` GAtt rows of `turns` turns, loss on the last answer only."""
    encoded = []
    for dialogue in load_user_dialogues(str(DIALOGUES))[:rows]:
        users = dialogue.users[:turns]
        messages = training_row(dialogue.instruction, users, [ANSWER] * len(users))
        encoded.append(encode_dialog(tokenizer, messages, "model"))
    width = max(len(e["input_ids"]) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in encoded])
    labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in encoded])
    return ids, labels


def step_seconds(model, optimizer, ids, labels, bf16: bool, steps: int) -> float:
    times = []
    for _ in range(steps + 1):  # the first is warm-up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False)
        loss = -out.log_probs.sum() / out.label_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return best(times[1:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the same for both variants)")
    parser.add_argument("--rows", type=int, default=2, help="dialogues per step")
    parser.add_argument("--turns", type=int, default=11, help="turns per dialogue (loss on the last answer)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(resolve_model_path(MODEL))
    ids, labels = gatt_rows(tokenizer, args.rows, args.turns)
    real = int((ids != (tokenizer.pad_token_id or -1)).sum())
    trained = int((labels != IGNORE_INDEX).sum())
    labelled_only = trl_utils._use_triton
    every_position = labelled_only.__wrapped__
    results = []
    for bf16 in (False, True):
        peak = measure_matmul_peak(torch.bfloat16 if bf16 else torch.float32)
        variants = (("every position (TRL's CPU path)", every_position), ("labelled only (ours)", labelled_only))
        for name, rule in variants:
            trl_utils._use_triton = rule
            torch.manual_seed(0)
            model = load_causal_lm(MODEL).train()
            trl_utils.add_fused_lm_head(model)
            params = sum(p.numel() for p in model.parameters())
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
            seconds = step_seconds(model, optimizer, ids, labels, bf16, args.steps)
            mfu = 6 * params * ids.numel() / seconds / peak
            results.append(("bf16 autocast" if bf16 else "fp32", name, seconds, mfu))
            print(f"{results[-1][0]:>13} | {name:<32} | {seconds:.2f} s/step | MFU {mfu:.1%}", flush=True)
    trl_utils._use_triton = labelled_only
    rows = [[dtype, name, f"{s:.2f}", f"{m:.1%}"] for dtype, name, s, m in results]
    print()
    print(
        f"{machine_description()}; {args.rows} rows x {ids.shape[1]} tokens ({real} real, {trained} with loss); "
        "MFU counts every token of the padded batch"
    )
    print(markdown_table(["dtype", "LM head", "s / step", "MFU"], rows))
    for dtype in ("fp32", "bf16 autocast"):
        every, ours = (s for d, _, s, _ in results if d == dtype)
        print(f"{dtype}: labelled only is {every / ours:.2f}x faster per step")


if __name__ == "__main__":
    main()
