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

Likelihood feature (optional, `likelihood_feature` at training; off by default and in the paper's recipes).
The score is then the head's value plus a learnt scale times the sum of the response tokens' log-probabilities
under the RM's own next-token head, kept from the chat checkpoint it starts from. Large chat models carry
whether a statement is true in their activations, where a scalar head can read it (Burns et al. 2022, Marks &
Tegmark 2023); a ~1M-parameter model holds what it knows only in its next-token predictions, and its head on the
last token could not tell "3 plus 4 is 7." from "3 plus 4 is 8." (BENCHMARKS.md, issue 14). The feature hands
the head what the backbone already predicts; it adds no knowledge the policy lacks. `reward_scores` is the one
definition, for training and scoring alike. The kept head and the scale are saved in the checkpoint's
safetensors beside the classifier (keys `LIKELIHOOD_HEAD`, `LIKELIHOOD_SCALE`); `config.likelihood_feature`
says they are there.

Calibration. A safety RM may carry `score_offset` in its config (`calibrate_unsafe_precision` at training):
a constant added to every raw score so that sigmoid(score) < 0.15 flags unsafe answers with a known
precision. Rankings are unchanged; only the gate and the logit/whitening input shift.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.modeling_layers import GenericForSequenceClassification

from alignment.attention import use_short_causal_attention
from alignment.chat import check_chat_format, encode_prompt_responses
from alignment.config import RecipeError
from alignment.logprobs import target_logprobs
from alignment.models import DTYPES, causal_attention_mask, load_tokenizer, resolve_model_path, stop_token_ids

LIKELIHOOD_PREFIX = "likelihood_"
LIKELIHOOD_HEAD = f"{LIKELIHOOD_PREFIX}head"
LIKELIHOOD_SCALE = f"{LIKELIHOOD_PREFIX}scale"


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


def _checkpoint_tensors(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a local safetensors checkpoint whose names start with `prefix`."""
    found = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            found.update({k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)})
    return found


def _lm_head_weight(path: str, dtype: str) -> torch.Tensor:
    """A causal-LM checkpoint's output embedding (its input embedding when the two are tied). Read from a local
    safetensors checkpoint with transformers' usual names, it costs one tensor instead of a second copy of the
    whole model (13 GB for a 7B model in bfloat16); otherwise the causal LM is loaded to take it."""
    config = AutoConfig.from_pretrained(path).get_text_config()
    name = "model.embed_tokens.weight" if getattr(config, "tie_word_embeddings", False) else "lm_head.weight"
    saved = _checkpoint_tensors(path, name)
    if name in saved:
        return saved[name]
    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).get_output_embeddings().weight.detach()


@contextmanager
def _likelihood_keys_expected():
    """The feature's tensors are not the classifier's: keep transformers from reporting them as unexpected."""
    old = getattr(GenericForSequenceClassification, "_keys_to_ignore_on_load_unexpected", None)
    GenericForSequenceClassification._keys_to_ignore_on_load_unexpected = [*(old or []), rf"^{LIKELIHOOD_PREFIX}"]
    try:
        yield
    finally:
        GenericForSequenceClassification._keys_to_ignore_on_load_unexpected = old


def add_likelihood_feature(model, lm_head_weight: torch.Tensor, scale: float | torch.Tensor = 1.0):
    """Give a sequence classifier the likelihood feature: a next-token head and a learnt scale (see module doc)."""
    vocab, hidden = lm_head_weight.shape
    # The backbone's dtype (a checkpoint saved in float32 may be loaded in bfloat16); the scale stays float32.
    head = torch.nn.Linear(hidden, vocab, bias=False, dtype=model.dtype)
    head.weight.data.copy_(lm_head_weight)
    model.add_module(LIKELIHOOD_HEAD, head)
    model.register_parameter(LIKELIHOOD_SCALE, torch.nn.Parameter(torch.as_tensor(scale, dtype=torch.float32)))
    model.config.likelihood_feature = True
    return model


def load_reward_model(
    model_name_or_path: str, dtype: str = "float32", likelihood_feature: bool = False, keep_likelihood: bool = True
):
    """AutoModelForSequenceClassification with num_labels=1.

    A causal-LM checkpoint (an SFT or chat model) loads its transformer and gets a fresh scalar head in place of
    the LM head (sec. 3.2.2); its pad id is set by `reward_pad_token_id`. With `likelihood_feature` it also keeps
    that LM head for the likelihood feature (module doc). A saved reward model loads as is, with its feature if
    it was trained with one, unless `keep_likelihood` is False (PPO's value model only needs the transformer).
    """
    # Loading only: the GPU check (benchmarks/gpu_check.py) imports this module (ScoreBatch) where trl is absent.
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # noqa: PLC0415

    if dtype not in DTYPES:
        raise RecipeError(f"unknown dtype '{dtype}' (use one of {', '.join(DTYPES)})")
    path = resolve_model_path(model_name_or_path)
    if _is_reward_checkpoint(path):
        with _likelihood_keys_expected():
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
        if model.config.pad_token_id is None:
            model.config.pad_token_id = reward_pad_token_id(load_tokenizer(path))
        if getattr(model.config, "likelihood_feature", False):
            model.config.likelihood_feature = False
            if keep_likelihood:
                saved = _checkpoint_tensors(path, LIKELIHOOD_HEAD)
                saved.update(_checkpoint_tensors(path, LIKELIHOOD_SCALE))
                if f"{LIKELIHOOD_HEAD}.weight" not in saved or LIKELIHOOD_SCALE not in saved:
                    raise RecipeError(f"{path}: config.json sets likelihood_feature but the weights lack its head")
                add_likelihood_feature(model, saved[f"{LIKELIHOOD_HEAD}.weight"], saved[LIKELIHOOD_SCALE])
        elif likelihood_feature:
            raise RecipeError(
                f"{path} is a reward model trained without likelihood_feature; it cannot gain one now "
                "(start from a chat checkpoint, or set likelihood_feature: false)"
            )
        return model
    # The dropped lm_head and the new score head are expected: silence transformers' warning about them.
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype])
    model.config.pad_token_id = reward_pad_token_id(load_tokenizer(path))
    if likelihood_feature:
        add_likelihood_feature(model, _lm_head_weight(path, dtype))
    return model


def encode_scored(
    tokenizer, messages: list[dict], response: str, chat_format: str, max_length: int | None
) -> tuple[list[int], int, bool]:
    """(token ids a reward model scores, how many of them are the response, whether the input was cut), for
    training and scoring alike. Over-long inputs keep their last `max_length` tokens, where the score is read."""
    return encode_scored_many(tokenizer, [messages], [response], chat_format, max_length)[0]


def encode_scored_many(
    tokenizer, prompts: list[list[dict]], responses: list[str], chat_format: str, max_length: int | None
) -> list[tuple[list[int], int, bool]]:
    """`encode_scored` of each (prompt, response) pair, tokenised together (`encode_prompt_responses`)."""
    out = []
    for ids, prompt_length in encode_prompt_responses(tokenizer, prompts, responses, chat_format):
        response_tokens = len(ids) - prompt_length
        cut = bool(max_length) and len(ids) > max_length
        if cut:
            ids = ids[-max_length:]
        out.append((ids, min(response_tokens, len(ids)), cut))
    return out


def reward_scores(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_tokens: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The reward model's score of each row, shape [N]: the head at the last real token (either padding side),
    plus, for a model with the likelihood feature, scale * sum of log p(token | earlier tokens) over the row's
    last `response_tokens` real tokens (the answer; a token with no real token before it has no prediction)."""
    head = getattr(model, LIKELIHOOD_HEAD, None)
    if head is None and getattr(getattr(model, "module", None), LIKELIHOOD_HEAD, None) is not None:
        # Calling the submodules of a DDP/FSDP-wrapped model would bypass the wrapper's gradient sync.
        raise RecipeError("likelihood_feature runs in a single process only; this model is wrapped for several")
    model_mask = causal_attention_mask(attention_mask)
    if head is None:
        logits = model(
            input_ids=input_ids, attention_mask=model_mask, position_ids=position_ids, use_cache=False
        ).logits
        return logits.reshape(input_ids.shape[0], -1)[:, 0]
    if response_tokens is None:
        raise ValueError("a reward model with the likelihood feature needs each row's response length")
    hidden = getattr(model, model.base_model_prefix)(
        input_ids=input_ids, attention_mask=model_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    real = attention_mask.bool()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (positions * real).argmax(-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    score = model.score(hidden[rows, last]).reshape(-1)
    real_from_end = real.flip(-1).cumsum(-1).flip(-1)  # 1 at the last real token, 2 before it, ...
    in_response = real & (real_from_end <= response_tokens.to(input_ids.device)[:, None])
    predicted = in_response[:, 1:] & real[:, :-1]
    # The head and log-softmax on the answer's predictions only: no (rows, length, vocab) array.
    logprobs, _ = target_logprobs(head(hidden[:, :-1][predicted]).float(), input_ids[:, 1:][predicted])
    likelihood = torch.zeros(input_ids.shape[0], dtype=logprobs.dtype, device=logprobs.device).index_add(
        0, predicted.nonzero()[:, 0], logprobs
    )
    return score.float() + getattr(model, LIKELIHOOD_SCALE) * likelihood


class RewardScorer:
    """Batched, no-grad scoring of (prompt messages, response text) pairs with one reward model.

    `model`/`tokenizer` may be passed already loaded (tests, or a pipeline that keeps the RM in memory);
    otherwise both are loaded from `model_name_or_path`. `max_length` keeps the last tokens of longer inputs
    (default: the window the model was trained on, `training_max_length` in its config, else the context
    window): a reward model never scores more tokens than it learnt from. `padding_side` ("right" or "left")
    only changes how rows are laid out; scores are the same either way. `short_causal_attention` switches the
    model to `alignment.attention`'s implementation (PPO's scoring; the same scores up to float rounding).
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
        short_causal_attention: bool = False,
    ):
        if batch_size <= 0:
            raise RecipeError("batch_size must be positive")
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name_or_path)
        check_chat_format(chat_format, self.tokenizer)
        self.model = model if model is not None else load_reward_model(model_name_or_path, dtype)
        if short_causal_attention:
            use_short_causal_attention(self.model)
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
        encoded = [
            (ids, response_tokens)
            for ids, response_tokens, _ in encode_scored_many(
                self.tokenizer, prompts, responses, self.chat_format, self.max_length
            )
        ]
        scores = torch.empty(len(encoded), dtype=torch.float32)
        # Length-sorted batches waste little compute on padding; scores go back to the input order.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            input_ids, attention_mask, position_ids = self._pad([encoded[i][0] for i in chunk])
            scores[chunk] = (
                reward_scores(
                    self.model,
                    input_ids.to(self.device),
                    attention_mask.to(self.device),
                    torch.tensor([encoded[i][1] for i in chunk], device=self.device),
                    position_ids.to(self.device),
                )
                .float()
                .cpu()
            )
        scores += self.score_offset
        return ScoreBatch(scores=scores, probs=torch.sigmoid(scores))
