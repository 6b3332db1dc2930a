"""Answer one prompt with a model, in the chat format it was trained on.

    python scripts/chat.py --model runs/smollm2/sft --chat_format llama2 "What is the capital of Ireland?"

Greedy by default (reproducible); --temperature 0.6 --top_p 0.9 samples like the released Llama 2 code.
"""

import argparse
import os
import sys

# This folder would otherwise come first on sys.path; keep imports resolving to the installed packages.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.chat import CHAT_FORMATS, check_chat_format, encode_prompt, user_prompt  # noqa: E402
from alignment.config import run_cli  # noqa: E402
from alignment.models import load_causal_lm, load_tokenizer  # noqa: E402
from rlhf.sampling import HFSamplingEngine, SamplingParams  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True, help="Output dir of a stage, a builtin: name, a hub id or a .gguf.")
    parser.add_argument("--chat_format", default="llama2", choices=CHAT_FORMATS)
    parser.add_argument("--system", default=None, help="Optional system prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy.")
    parser.add_argument("--top_p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    check_chat_format(args.chat_format, tokenizer)
    model = load_causal_lm(args.model)
    prompt_ids = encode_prompt(tokenizer, user_prompt(args.prompt, args.system), args.chat_format)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    (sample,) = HFSamplingEngine(model, tokenizer).generate([prompt_ids], params)
    print(sample.text if sample.finished else sample.text + " [truncated at max_new_tokens]")


if __name__ == "__main__":
    run_cli(main)
