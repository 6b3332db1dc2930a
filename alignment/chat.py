"""Chat formats and the token-level prompt/answer split every stage relies on.

A dialog is cut into segments: prompt segments (system and user text plus the template's markers) and
answer segments. Each segment is tokenized on its own and the ids are concatenated, so the boundary between
"no loss" and "loss" is exact by construction rather than recovered from offsets afterwards. Generation
prompts and reward-model inputs are built from the same segments, so the model sees at sampling time exactly
the token sequence it was trained on.

Formats:
- "llama2": the released Llama 2 code's template (arXiv 2307.09288, sec. 3.1 and 3.3, and the released `llama` code):
  `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s><s>[INST] ...`, token for token as
  Meta's `chat_completion` encodes it (the space after the answer is a token before EOS).
  Each answer segment ends with EOS, which is trained so the model learns to stop.
- "model": the tokenizer's own chat template (e.g. SmolLM2's ChatML); the answer segment is the text the
  template adds for the assistant turn, end-of-turn marker included.
"""

from __future__ import annotations

from alignment.config import RecipeError

CHAT_FORMATS = ("llama2", "model")
IGNORE_INDEX = -100

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def check_chat_format(chat_format: str, tokenizer=None) -> None:
    if chat_format not in CHAT_FORMATS:
        raise RecipeError(f"unknown chat_format '{chat_format}' (use one of {', '.join(CHAT_FORMATS)})")
    if chat_format == "model" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise RecipeError("chat_format 'model' needs a tokenizer with a chat template; use 'llama2'")


def _merge_system(messages: list[dict]) -> list[dict]:
    """Llama 2 has no system role: the system prompt is merged into the first user message."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    if rest:
        rest[0] = {"role": rest[0]["role"], "content": f"{B_SYS}{system}{E_SYS}{rest[0]['content']}"}
    return rest


def llama2_dialog_text(messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The Llama 2 rendering as plain text (for reading, tokenizer training and the pretraining corpus)."""
    parts = []
    for message in _merge_system(messages):
        if message["role"] == "user":
            parts.append(f"<s>{B_INST} {message['content'].strip()} {E_INST}")
        else:
            parts.append(f" {message['content'].strip()} </s>")
    return "".join(parts)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _llama2_segment_texts(messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, is_answer) of each Llama 2 turn, each encoded on its own (`_llama2_segments`)."""
    return [
        (f"{B_INST} {m['content'].strip()} {E_INST}", False)
        if m["role"] == "user"
        # Meta's release encodes f"{B_INST} {user} {E_INST} {answer} " and then EOS: the answer's trailing space
        # is a token of its own before EOS ("▁" in SentencePiece), and the model learns to emit it.
        else (f"{m['content'].strip()} ", True)
        for m in _merge_system(messages)
    ]


def _llama2_framed(tokenizer, texts: list[tuple[str, bool]], encoded: list[list[int]]):
    """Segments from their encoded texts: BOS before each user turn, EOS after each answer."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [
        (ids + [tokenizer.eos_token_id], True) if is_answer else (bos + ids, False)
        for (_, is_answer), ids in zip(texts, encoded)
    ]


def _llama2_segments(tokenizer, messages: list[dict], add_generation_prompt: bool):
    texts = _llama2_segment_texts(messages)
    return _llama2_framed(tokenizer, texts, [_encode(tokenizer, text) for text, _ in texts])


def _template_segments(tokenizer, messages: list[dict], add_generation_prompt: bool):
    def render(msgs, generation_prompt):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    texts: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = render(messages[:i], True)
        full_text = render(messages[: i + 1], False)
        if not prompt_text.startswith(done) or not full_text.startswith(prompt_text):
            raise RecipeError(
                "the tokenizer's chat template does not render dialogs as growing prefixes; use chat_format 'llama2'"
            )
        texts.append((prompt_text[len(done) :], False))
        texts.append((full_text[len(prompt_text) :], True))
        done = full_text
    if add_generation_prompt or not messages or messages[-1]["role"] != "assistant":
        tail = render(messages, add_generation_prompt)
        texts.append((tail[len(done) :], False))
    return [(_encode(tokenizer, text), is_answer) for text, is_answer in texts if text]


def dialog_segments(
    tokenizer, messages: list[dict], chat_format: str = "llama2", add_generation_prompt: bool = False
) -> list[tuple[list[int], bool]]:
    """(token_ids, is_answer) segments of a dialog; with add_generation_prompt the last user turn stays open."""
    check_chat_format(chat_format)
    if chat_format == "llama2":
        return _llama2_segments(tokenizer, messages, add_generation_prompt)
    return _template_segments(tokenizer, messages, add_generation_prompt)


def encode_dialog(tokenizer, messages: list[dict], chat_format: str = "llama2") -> dict:
    """input_ids and labels for SFT: labels are -100 on every prompt token, in every turn (sec. 3.1).

    An assistant message with ``"loss": False`` is context only: its tokens are -100 too. Ghost Attention
    (sec. 3.3) trains on dialogues whose earlier answers carry no loss (``sft.gatt``).
    """
    trained = [m.get("loss", True) is not False for m in messages if m["role"] == "assistant"]
    input_ids, labels = [], []
    answer_index = 0
    for ids, is_answer in dialog_segments(tokenizer, messages, chat_format):
        if is_answer:
            is_answer = trained[answer_index]
            answer_index += 1
        input_ids += ids
        labels += ids if is_answer else [IGNORE_INDEX] * len(ids)
    return {"input_ids": input_ids, "labels": labels}


def encode_prompt(tokenizer, messages: list[dict], chat_format: str = "llama2") -> list[int]:
    """Token ids of a dialog whose last user turn is open, ready for the model to answer."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a generation prompt must end with a user message")
    return [i for ids, _ in dialog_segments(tokenizer, messages, chat_format, add_generation_prompt=True) for i in ids]


def encode_prompt_response(tokenizer, messages: list[dict], response: str, chat_format: str = "llama2"):
    """(input_ids, prompt_length) of a prompt and one finished answer: what reward models score."""
    return encode_prompt_responses(tokenizer, [messages], [response], chat_format)[0]


def encode_prompt_responses(
    tokenizer, prompts: list[list[dict]], responses: list[str], chat_format: str = "llama2"
) -> list[tuple[list[int], int]]:
    """`encode_prompt_response` of each (prompt, answer) pair. In the Llama 2 format every turn of every pair is
    tokenised in one tokenizer call: one call per turn cost a reward model's scoring as much as its forward pass
    on the tiny Llama (512 rollouts, PPO)."""
    for messages in prompts:
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("a generation prompt must end with a user message")
    if chat_format != "llama2":
        return [_encode_prompt_response_by_template(tokenizer, m, r, chat_format) for m, r in zip(prompts, responses)]
    # Llama 2's format encodes each turn on its own, so the open prompt is the answered dialog's segments before
    # the answer's: one encoding of the prompt instead of two.
    per_pair = [
        _llama2_segment_texts(list(messages) + [{"role": "assistant", "content": response}])
        for messages, response in zip(prompts, responses)
    ]
    flat = [text for texts in per_pair for text, _ in texts]
    encoded = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    out, start = [], 0
    for texts in per_pair:
        segments = _llama2_framed(tokenizer, texts, encoded[start : start + len(texts)])
        start += len(texts)
        input_ids = [i for ids, _ in segments for i in ids]
        out.append((input_ids, len(input_ids) - len(segments[-1][0])))
    return out


def _encode_prompt_response_by_template(tokenizer, messages: list[dict], response: str, chat_format: str):
    prompt_ids = encode_prompt(tokenizer, messages, chat_format)
    full = encode_dialog(tokenizer, list(messages) + [{"role": "assistant", "content": response}], chat_format)
    if full["input_ids"][: len(prompt_ids)] != prompt_ids:
        raise RecipeError("chat template renders the open prompt differently from the answered one")
    return full["input_ids"], len(prompt_ids)


def user_prompt(text: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]
