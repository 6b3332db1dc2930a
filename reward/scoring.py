"""Scoring with a trained reward model: the interface rejection sampling, PPO and evaluation call.

A reward model is a sequence classifier with one output (Llama 2, sec. 3.2.2: the chat model with its
next-token head replaced by a scalar regression head). Its score for (prompt, response) is the head's value
at the last real token of the sequence built by `alignment.chat.encode_prompt_response`, i.e. exactly the
tokens the policy produced after exactly the prompt it saw.

Padding and the score position. transformers' sequence classifiers read the score at the rightmost token
that is not `config.pad_token_id`. Many chat tokenizers pad with EOS (SmolLM2: `<|im_end|>`), and the Llama 2
template ends every answer with EOS, so with pad == EOS the score would be read one token early, before the
end-of-answer token: a finished and a truncated answer would look alike. A reward model therefore pads with
a token that cannot end a sequence (`reward_pad_token_id`), set in its config and saved with its tokenizer;
then right and left padding both give the score at the last real token.

Calibration. A safety RM may carry `score_offset` in its config (`calibrate_unsafe_precision` at training):
a constant added to every raw score so that sigmoid(score) < 0.15 flags unsafe answers with a known
precision. Rankings are unchanged; only the gate and the logit/whitening input shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from alignment.chat import check_chat_format, encode_prompt_response
from alignment.config import RecipeError
from alignment.models import DTYPES, load_tokenizer, resolve_model_path, stop_token_ids


@dataclass
class ScoreBatch:
    scores: torch.Tensor  # raw scalar RM outputs, shape [N], float32, CPU
    probs: torch.Tensor  # sigmoid(scores): the scale of the 0.15 safety threshold (sec. 3.2.2 / 3.3)


def reward_pad_token_id(tokenizer) -> int:
    """A padding id that never ends a real sequence: the tokenizer's pad unless it is an end token.

    Falls back to UNK, then BOS (BOS only ever opens a turn, so it is never a sequence's last token).
    """
    stops = set(stop_token_ids(tokenizer))
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id):
        if candidate is not None and candidate not in stops:
            return int(candidate)
    raise RecipeError(
        "the tokenizer has no pad, unk or bos token distinct from its end tokens; "
        "a reward model cannot locate the last real token"
    )


def prepare_reward_tokenizer(tokenizer):
    """Set the tokenizer's pad token to `reward_pad_token_id` (TRL copies it into the model config)."""
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(reward_pad_token_id(tokenizer))
    return tokenizer


def _is_reward_checkpoint(path: str) -> bool:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return False
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def load_reward_model(model_name_or_path: str, dtype: str = "float32"):
    """AutoModelForSequenceClassification with num_labels=1.

    A causal-LM checkpoint (an SFT or chat model) loads its transformer and gets a fresh scalar head in place of
    the LM head (sec. 3.2.2); its pad id is set by `reward_pad_token_id`. A saved reward model loads as is.
    """
    # Loading only: the GPU check (benchmarks/gpu_check.py) imports this module (ScoreBatch) where trl is absent.
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # noqa: PLC0415

    if dtype not in DTYPES:
        raise RecipeError(f"unknown dtype '{dtype}' (use one of {', '.join(DTYPES)})")
    path = resolve_model_path(model_name_or_path)
    if _is_reward_checkpoint(path):
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
        if model.config.pad_token_id is None:
            model.config.pad_token_id = reward_pad_token_id(load_tokenizer(path))
        return model
    # The dropped lm_head and the new score head are expected: silence transformers' warning about them.
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    model.config.pad_token_id = reward_pad_token_id(load_tokenizer(path))
    return model


class RewardScorer:
    """Batched, no-grad scoring of (prompt messages, response text) pairs with one reward model.

    `model`/`tokenizer` may be passed already loaded (tests, or a pipeline that keeps the RM in memory);
    otherwise both are loaded from `model_name_or_path`. `max_length` keeps the last tokens of longer inputs
    (default: the window the model was trained on, `training_max_length` in its config, else the context
    window): a reward model never scores more tokens than it learnt from. `padding_side` ("right" or "left")
    only changes how rows are laid out; scores are the same either way.
    """

    def __init__(
        self,
        model_name_or_path: str,
        chat_format: str = "llama2",
        dtype: str = "float32",
        batch_size: int = 16,
        device: str | None = None,
        model=None,
        tokenizer=None,
        max_length: int | None = None,
    ):
        if batch_size <= 0:
            raise RecipeError("batch_size must be positive")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name_or_path)
        check_chat_format(chat_format, self.tokenizer)
        self.model = model if model is not None else load_reward_model(model_name_or_path, dtype)
        self.chat_format = chat_format
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(self.model.parameters()).device
        self.model.to(self.device).eval()
        config = self.model.config.get_text_config()
        self.pad_token_id = config.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = reward_pad_token_id(self.tokenizer)
            config.pad_token_id = self.pad_token_id
        window = max_length or getattr(self.model.config, "training_max_length", None)
        self.max_length = min(filter(None, (window, getattr(config, "max_position_embeddings", None))), default=None)
        self.padding_side = "right"

    @property
    def score_offset(self) -> float:
        return float(getattr(self.model.config, "score_offset", 0.0) or 0.0)

    def encode(self, messages: list[dict], response: str) -> list[int]:
        """Token ids the model scores; over-long inputs keep their end, where the score is read."""
        ids, _ = encode_prompt_response(self.tokenizer, messages, response, self.chat_format)
        if self.max_length and len(ids) > self.max_length:
            ids = ids[-self.max_length :]
        return ids

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            input_ids[i, span] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, span] = 1
        # Positions count real tokens only, so a left-padded row sees the same RoPE positions as an unpadded one.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids, attention_mask, position_ids

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], responses: list[str]) -> ScoreBatch:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts and {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        scores = torch.empty(len(encoded), dtype=torch.float32)
        # Length-sorted batches waste little compute on padding; scores go back to the input order.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            input_ids, attention_mask, position_ids = self._pad([encoded[i] for i in chunk])
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                position_ids=position_ids.to(self.device),
                use_cache=False,
            ).logits
            scores[chunk] = logits.reshape(len(chunk), -1)[:, 0].float().cpu()
        scores += self.score_offset
        return ScoreBatch(scores=scores, probs=torch.sigmoid(scores))
