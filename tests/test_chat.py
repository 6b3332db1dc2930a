"""The prompt/answer token split: labels are -100 on exactly the prompt tokens (sec. 3.1, "zero out the loss on
tokens from the user prompt") and the real ids on exactly the answer tokens, EOS / end-of-turn included.

Llama 2 format dialogs use digits only: the tiny tokenizer splits digits and has single-character pieces for
them, so the expected pieces below do not depend on which BPE merges the tokenizer learned.
"""

import pytest

from alignment.chat import (
    IGNORE_INDEX,
    check_chat_format,
    dialog_segments,
    encode_dialog,
    encode_prompt,
    encode_prompt_response,
    encode_prompt_responses,
    llama2_dialog_text,
    user_prompt,
)
from alignment.config import RecipeError

P = "prompt"  # marks a token that must carry no loss
A = "answer"  # marks a token whose label must be its own id


def check_encoding(tokenizer, encoded, expected):
    """`expected` is [(piece, P|A), ...]: the whole token sequence and its loss mask, written out."""
    pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert pieces == [piece for piece, _ in expected]
    want_labels = [i if kind == A else IGNORE_INDEX for i, (_, kind) in zip(encoded["input_ids"], expected)]
    assert encoded["labels"] == want_labels


def test_llama2_special_token_ids(tiny_tokenizer):
    ids = tiny_tokenizer.convert_tokens_to_ids(
        ["<pad>", "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
    )
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7]
    assert (tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id) == (2, 3, 0)


def test_llama2_single_turn(tiny_tokenizer):
    dialog = [{"role": "user", "content": "12 3"}, {"role": "assistant", "content": "45"}]
    encoded = encode_dialog(tiny_tokenizer, dialog, "llama2")
    check_encoding(
        tiny_tokenizer,
        encoded,
        [
            ("<s>", P),
            ("[INST]", P),
            ("▁", P),
            ("1", P),
            ("2", P),
            ("▁", P),
            ("3", P),
            ("▁", P),
            ("[/INST]", P),
            ("▁", A),
            ("4", A),
            ("5", A),
            ("▁", A),
            ("</s>", A),
        ],
    )
    assert encoded["input_ids"][:2] == [2, 4] and encoded["input_ids"][-1] == 3
    assert encoded["labels"][:9] == [IGNORE_INDEX] * 9


def test_llama2_multi_turn_masks_every_user_turn(tiny_tokenizer):
    dialog = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4 5"},
    ]
    check_encoding(
        tiny_tokenizer,
        encode_dialog(tiny_tokenizer, dialog),
        [
            ("<s>", P),
            ("[INST]", P),
            ("▁", P),
            ("1", P),
            ("▁", P),
            ("[/INST]", P),
            ("▁", A),
            ("2", A),
            ("▁", A),
            ("</s>", A),
            ("<s>", P),
            ("[INST]", P),
            ("▁", P),
            ("3", P),
            ("▁", P),
            ("[/INST]", P),
            ("▁", A),
            ("4", A),
            ("▁", A),
            ("5", A),
            ("▁", A),
            ("</s>", A),
        ],
    )


def test_llama2_system_prompt_is_merged_into_first_user_turn(tiny_tokenizer):
    dialog = [
        {"role": "system", "content": "7"},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4"},
    ]
    check_encoding(
        tiny_tokenizer,
        encode_dialog(tiny_tokenizer, dialog),
        [
            ("<s>", P),
            ("[INST]", P),
            ("▁", P),
            ("<<SYS>>", P),
            ("\n", P),
            ("7", P),
            ("\n", P),
            ("<</SYS>>", P),
            ("\n\n", P),
            ("1", P),
            ("▁", P),
            ("[/INST]", P),
            ("▁", A),
            ("2", A),
            ("▁", A),
            ("</s>", A),
            # the system prompt is not repeated in later turns (Llama 2 reference code)
            ("<s>", P),
            ("[INST]", P),
            ("▁", P),
            ("3", P),
            ("▁", P),
            ("[/INST]", P),
            ("▁", A),
            ("4", A),
            ("▁", A),
            ("</s>", A),
        ],
    )


def test_llama2_segments_tokenize_like_the_whole_text(tiny_tokenizer):
    # Cutting the dialog into segments must not change the tokens: the ids equal those of the rendered text.
    dialog = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 18 minus 14?"},
        {"role": "assistant", "content": "18 minus 14 is 4."},
    ]
    ids = encode_dialog(tiny_tokenizer, dialog)["input_ids"]
    assert tiny_tokenizer(llama2_dialog_text(dialog), add_special_tokens=False)["input_ids"] == ids


def test_llama2_matches_metas_chat_completion_encoding(tiny_tokenizer):
    """Meta's `chat_completion`: per turn, encode(f"{B_INST} {user} {E_INST} {answer} ", bos=True, eos=True),
    then the open turn encode(f"{B_INST} {user} {E_INST}", bos=True); the space after an answer is a token."""
    dialog = [
        {"role": "user", "content": "What is 7 plus 5?"},
        {"role": "assistant", "content": "7 plus 5 is 12."},
        {"role": "user", "content": "And 2 plus 2?"},
        {"role": "assistant", "content": " 4. "},
    ]

    def meta(text, eos):
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        return [tiny_tokenizer.bos_token_id] + ids + ([tiny_tokenizer.eos_token_id] if eos else [])

    expected = meta("[INST] What is 7 plus 5? [/INST] 7 plus 5 is 12. ", True) + meta(
        "[INST] And 2 plus 2? [/INST] 4. ", True
    )
    ids = encode_dialog(tiny_tokenizer, dialog)["input_ids"]
    assert ids == expected
    assert tiny_tokenizer.convert_ids_to_tokens(ids[-3:]) == [".", "▁", "</s>"]
    assert encode_prompt(tiny_tokenizer, dialog[:3]) == meta(
        "[INST] What is 7 plus 5? [/INST] 7 plus 5 is 12. ", True
    ) + meta("[INST] And 2 plus 2? [/INST]", False)


def test_llama2_generation_prompt_is_the_prefix_of_the_trained_dialog(tiny_tokenizer):
    messages = user_prompt("3", system="7")
    prompt = encode_prompt(tiny_tokenizer, messages)
    assert tiny_tokenizer.convert_ids_to_tokens(prompt) == [
        "<s>",
        "[INST]",
        "▁",
        "<<SYS>>",
        "\n",
        "7",
        "\n",
        "<</SYS>>",
        "\n\n",
        "3",
        "▁",
        "[/INST]",
    ]
    ids, prompt_length = encode_prompt_response(tiny_tokenizer, messages, "45")
    assert prompt_length == len(prompt) == 12
    assert ids[:prompt_length] == prompt
    assert tiny_tokenizer.convert_ids_to_tokens(ids[prompt_length:]) == ["▁", "4", "5", "▁", "</s>"]
    with pytest.raises(ValueError, match="end with a user message"):
        encode_prompt(tiny_tokenizer, messages + [{"role": "assistant", "content": "4"}])


def test_llama2_prompt_response_is_the_open_prompt_then_the_answer(tiny_tokenizer):
    # One encoding of the answered dialog must split where the open prompt ends, over several turns too.
    messages = [
        {"role": "system", "content": "7"},
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3 4"},
    ]
    ids, prompt_length = encode_prompt_response(tiny_tokenizer, messages, "56")
    prompt = encode_prompt(tiny_tokenizer, messages)
    answered = encode_dialog(tiny_tokenizer, messages + [{"role": "assistant", "content": "56"}])["input_ids"]
    assert (ids, prompt_length) == (answered, len(prompt))
    assert ids[:prompt_length] == prompt
    with pytest.raises(ValueError, match="end with a user message"):
        encode_prompt_response(tiny_tokenizer, messages[:3], "56")


def test_pairs_tokenised_together_equal_each_pair_alone(tiny_tokenizer):
    # One tokenizer call for every turn of every pair: each pair's ids and split as encode_dialog / encode_prompt.
    prompts = [
        [{"role": "user", "content": "1 2"}],
        [{"role": "system", "content": "7"}, {"role": "user", "content": "3"}],
        [
            {"role": "user", "content": "1"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "3 4"},
        ],
    ]
    responses = ["45", "", "6 7 8"]
    together = encode_prompt_responses(tiny_tokenizer, prompts, responses)
    for (ids, prompt_length), messages, response in zip(together, prompts, responses):
        answered = encode_dialog(tiny_tokenizer, messages + [{"role": "assistant", "content": response}])
        assert (ids, prompt_length) == (answered["input_ids"], len(encode_prompt(tiny_tokenizer, messages)))
    assert encode_prompt_responses(tiny_tokenizer, [], []) == []
    with pytest.raises(ValueError, match="end with a user message"):
        encode_prompt_responses(tiny_tokenizer, [prompts[0], prompts[2][:2]], ["1", "2"])


# SmolLM2's ChatML template adds its default system prompt when a dialog has none.
SMOL_SYSTEM = [
    "<|im_start|>",
    "system",
    "Ċ",
    "You",
    "Ġare",
    "Ġa",
    "Ġhelpful",
    "ĠAI",
    "Ġassistant",
    "Ġnamed",
    "ĠSm",
    "ol",
    "LM",
    ",",
    "Ġtrained",
    "Ġby",
    "ĠH",
    "ugging",
    "ĠFace",
    "<|im_end|>",
    "Ċ",
]


def test_model_format_chatml_multi_turn(smollm2_tokenizer):
    dialog = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    encoded = encode_dialog(smollm2_tokenizer, dialog, "model")
    check_encoding(
        smollm2_tokenizer,
        encoded,
        [(piece, P) for piece in SMOL_SYSTEM]
        + [
            ("<|im_start|>", P),
            ("user", P),
            ("Ċ", P),
            ("Hi", P),
            ("<|im_end|>", P),
            ("Ċ", P),
            ("<|im_start|>", P),
            ("ass", P),
            ("istant", P),
            ("Ċ", P),
            ("Hello", A),
            (".", A),
            ("<|im_end|>", A),
            ("Ċ", A),
            ("<|im_start|>", P),
            ("user", P),
            ("Ċ", P),
            ("By", P),
            ("e", P),
            ("<|im_end|>", P),
            ("Ċ", P),
            ("<|im_start|>", P),
            ("ass", P),
            ("istant", P),
            ("Ċ", P),
            ("C", A),
            ("iao", A),
            ("<|im_end|>", A),
            ("Ċ", A),
        ],
    )
    # the end-of-turn token is trained, so the model learns to stop
    assert smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    whole = smollm2_tokenizer.apply_chat_template(dialog, tokenize=False)
    assert encoded["input_ids"] == smollm2_tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_model_format_system_prompt_and_generation_prompt(smollm2_tokenizer):
    messages = user_prompt("Hi", system="Be kind.")
    prompt = encode_prompt(smollm2_tokenizer, messages, "model")
    assert smollm2_tokenizer.convert_ids_to_tokens(prompt) == [
        "<|im_start|>",
        "system",
        "Ċ",
        "Be",
        "Ġkind",
        ".",
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "user",
        "Ċ",
        "Hi",
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
    ]
    ids, prompt_length = encode_prompt_response(smollm2_tokenizer, messages, "Hello.", "model")
    assert ids[:prompt_length] == prompt
    assert smollm2_tokenizer.convert_ids_to_tokens(ids[prompt_length:]) == ["Hello", ".", "<|im_end|>", "Ċ"]


def test_segments_alternate_prompt_and_answer(tiny_tokenizer):
    dialog = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4"},
    ]
    assert [is_answer for _, is_answer in dialog_segments(tiny_tokenizer, dialog)] == [False, True, False, True]


def test_unknown_chat_format_is_a_recipe_error(tiny_tokenizer):
    with pytest.raises(RecipeError, match="unknown chat_format 'chatml'"):
        check_chat_format("chatml")
    # the tiny tokenizer has no chat template of its own
    with pytest.raises(RecipeError, match="needs a tokenizer with a chat template"):
        check_chat_format("model", tiny_tokenizer)
