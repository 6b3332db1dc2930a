"""Stage 1 (SFT) through TRL's real data path: padding and best-fit packing keep the answer-only loss mask, packed
examples do not attend to each other, the tiny model learns its training answers, and the saved model reloads
and answers in the trained format."""

import copy
import json

import pytest
import torch
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from alignment.chat import IGNORE_INDEX, encode_dialog, encode_prompt, user_prompt
from alignment.config import RecipeError, parse_recipe
from alignment.data import load_dialogs
from alignment.paths import DEMO_SFT_DATA
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments
from sft.trainer import COMPLETE_MARKER, resolve_dataset, split_dialogs, tokenize_dialogs

DIGIT_DIALOGS = [
    [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}],
    [{"role": "user", "content": "12 3"}, {"role": "assistant", "content": "45"}],
    [
        {"role": "user", "content": "6"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "8"},
        {"role": "assistant", "content": "9 0"},
    ],
]
# Token counts of the dialogs above: 10, 14, 22; prompt tokens carry -100, answers (with ▁ </s>) their ids.


def test_padded_batch_keeps_prompt_mask_and_masks_padding(tiny_tokenizer):
    rows = tokenize_dialogs(DIGIT_DIALOGS[:2], tiny_tokenizer, "llama2")
    batch = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id)(list(rows))
    # <s> [INST] ▁ 1 ▁ [/INST] | ▁ 2 ▁ </s>, padded to the 14 tokens of the second dialog
    space, d1, d2 = tiny_tokenizer.convert_tokens_to_ids(["▁", "1", "2"])
    one = [2, 4, space, d1, space, 5, space, d2, space, 3]
    x = IGNORE_INDEX
    assert batch["input_ids"].tolist() == [one + [0] * 4, rows[1]["input_ids"]]
    assert batch["labels"].tolist() == [[x] * 6 + [space, d2, space, 3] + [x] * 4, rows[1]["labels"]]
    assert batch["attention_mask"].tolist() == [[1] * 10 + [0] * 4, [1] * 14]
    assert tiny_tokenizer.convert_ids_to_tokens(rows[1]["labels"][9:]) == ["▁", "4", "5", "▁", "</s>"]
    assert rows[1]["labels"][:9] == [x] * 9


def packed_batch(tokenizer, dialogs, max_length):
    """What SFTTrainer does with packing=True (strategy bfd): pack_dataset, then the padding-free collator."""
    rows = tokenize_dialogs(dialogs, tokenizer, "llama2")
    packs = pack_dataset(rows.select_columns(["input_ids", "labels"]), max_length, "bfd")
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    return rows, packs, collator(list(packs))


def test_packed_batch_positions_and_labels(tiny_tokenizer):
    rows, packs, batch = packed_batch(tiny_tokenizer, DIGIT_DIALOGS, max_length=24)
    # best-fit decreasing: the 22-token dialog opens the first pack; 14 and 10 do not fit beside it (max 24) but do
    # fit together (24) in the second
    assert [p["seq_lengths"] for p in packs] == [[22], [14, 10]]
    lengths = [22, 14, 10]
    order = [rows[2], rows[1], rows[0]]
    assert batch["input_ids"].tolist() == [sum((r["input_ids"] for r in order), [])]
    assert batch["position_ids"].tolist() == [sum((list(range(n)) for n in lengths), [])]
    assert batch["cu_seq_lens_q"].tolist() == [0, 22, 36, 46]
    # Each example's labels as in its own row, the first token of every example never predicted from the
    # previous example (here it is <s>, a prompt token, already -100).
    assert batch["labels"].tolist() == [sum((r["labels"] for r in order), [])]
    starts = [0, 22, 36]
    assert all(batch["labels"][0, s] == IGNORE_INDEX for s in starts)
    answer_positions = (batch["labels"][0] != IGNORE_INDEX).nonzero().flatten().tolist()
    # answers: "7" + ▁ </s> and "9 0" + ▁ </s> in the multi-turn dialog, then "45", then "2"
    assert answer_positions == [6, 7, 8, 9, 16, 17, 18, 19, 20, 21] + [31, 32, 33, 34, 35] + [42, 43, 44, 45]


def test_collator_masks_first_token_of_each_packed_example(tiny_tokenizer):
    # Even if a row's first token had a label, it must not be learnt from the end of the previous example.
    rows = [{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


def test_packed_examples_do_not_attend_to_each_other(tiny_tokenizer, tiny_model):
    dialogs = load_dialogs(str(DEMO_SFT_DATA))[:6]
    rows, packs, batch = packed_batch(tiny_tokenizer, dialogs, max_length=512)
    assert len(packs) == 1 and len(packs[0]["seq_lengths"]) == 6
    with torch.no_grad():
        # use_cache=False as SFTTrainer.compute_loss passes it: transformers only turns restarting position_ids
        # into a block-diagonal mask when there is no attention mask and no KV cache.
        packed = tiny_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        packed = packed.logits[0]
        # control: the same tokens as one ordinary causal sequence do see the earlier examples
        leaky = tiny_model(input_ids=batch["input_ids"]).logits[0]
        starts = batch["cu_seq_lens_q"].tolist()
        by_ids = {tuple(r["input_ids"]): r for r in rows}
        for start, stop in zip(starts[:-1], starts[1:]):
            ids = batch["input_ids"][0, start:stop]
            assert tuple(ids.tolist()) in by_ids
            alone = tiny_model(input_ids=ids[None]).logits[0]
            torch.testing.assert_close(packed[start:stop], alone, atol=1e-4, rtol=0)
            if start > 0:
                assert (leaky[start:stop] - alone).abs().max() > 1e-3


def test_trainer_uses_bfd_packing_and_padding_free_collator(tmp_path, tiny_tokenizer, tiny_model):
    from trl import SFTTrainer

    args = Llama2SFTConfig(
        output_dir=str(tmp_path), max_length=64, per_device_train_batch_size=2, report_to="none", bf16=False
    )
    assert (args.packing, args.packing_strategy, args.activation_checkpointing) == (True, "bfd", False)
    rows = tokenize_dialogs(DIGIT_DIALOGS, tiny_tokenizer, "llama2")
    trainer = SFTTrainer(
        model=copy.deepcopy(tiny_model), args=args, train_dataset=rows, processing_class=tiny_tokenizer
    )
    assert trainer.data_collator.padding_free
    packed = trainer.train_dataset
    assert sorted(packed.column_names) == ["input_ids", "labels", "seq_lengths"]
    # our labels go through untouched: every example once, with its own -100 mask
    assert sorted(n for lengths in packed["seq_lengths"] for n in lengths) == [10, 14, 22]
    by_len = {len(r["labels"]): r["labels"] for r in rows}
    for pack in packed:
        offset = 0
        for n in pack["seq_lengths"]:
            assert pack["labels"][offset : offset + n] == by_len[n]
            offset += n


def test_cpu_lm_head_scores_labelled_positions_only_with_the_same_log_probs(tiny_tokenizer, monkeypatch):
    """sft.trainer makes TRL's fused LM head skip unlabelled positions on CPU; the per-token log-probs and the
    loss are those of scoring every position."""
    import trl.trainer.utils as trl_utils

    from alignment.models import load_causal_lm

    assert trl_utils._use_triton(torch.device("cpu"))  # the patch is installed by importing sft.trainer
    model = load_causal_lm("builtin:tiny-llama").eval()
    trl_utils.add_fused_lm_head(model)
    dialog = load_dialogs(str(DEMO_SFT_DATA))[0]
    encoded = encode_dialog(tiny_tokenizer, dialog)
    input_ids = torch.tensor([encoded["input_ids"]])
    labels = torch.tensor([encoded["labels"]])
    assert 0 < (labels != IGNORE_INDEX).sum() < labels.numel()
    with torch.no_grad():
        compact = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
        monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)  # TRL's own CPU path
        every = model(input_ids=input_ids, labels=labels, fused_lm_head=True).log_probs
        logits = model(input_ids=input_ids).logits[0, :-1]
    torch.testing.assert_close(compact, every, atol=1e-6, rtol=0)
    # and both equal the log-softmax of the full logits at the labelled positions (zero elsewhere)
    targets = labels[0, 1:]
    mask = targets != IGNORE_INDEX
    expected = torch.log_softmax(logits.float(), -1)[mask].gather(1, targets[mask][:, None])[:, 0]
    assert compact.shape == (1, len(targets))  # one log-prob per next-token label
    torch.testing.assert_close(compact[0][mask], expected, atol=1e-5, rtol=0)
    assert (compact[0][~mask] == 0).all()


def test_dataset_names_and_split():
    assert resolve_dataset("builtin:demo-sft") == str(DEMO_SFT_DATA)
    assert resolve_dataset("data/mine.jsonl") == "data/mine.jsonl"
    with pytest.raises(RecipeError, match=r"unknown builtin dataset 'builtin:nope' \(known: builtin:demo-sft\)"):
        resolve_dataset("builtin:nope")
    items = list(range(20))
    train, held_out = split_dialogs(items, 0.1, seed=0)
    # Held out when hash(seed, prompt) < 0.1: 4 of these 20 (the share is 0.1 in expectation, not exactly).
    assert len(held_out) == 4 and sorted(train + held_out) == items
    assert split_dialogs(items, 0.1, seed=0) == (train, held_out)  # seeded: the same rows every run
    assert split_dialogs(items, 0.0, seed=0) == (items, [])


def test_split_keeps_every_copy_of_a_prompt_on_one_side():
    """Repeated prompts (with other answers) must not be held out in one copy and trained on in another."""
    dialogs = [
        [{"role": "user", "content": f"q{i % 15}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(60)
    ]
    train, held_out = split_dialogs(dialogs, 0.25, seed=1)
    assert held_out and train
    assert not {d[0]["content"] for d in train} & {d[0]["content"] for d in held_out}
    assert len(held_out) % 4 == 0  # each of the 15 prompts appears 4 times: all copies move together


# ---------------------------------------------------------------------------------------------------------------
# A short real run: run_sft on 24 demonstrations, from the tiny preset.

TRAIN_ROWS = 24


def answer_loss(model, tokenizer, dialogs) -> float:
    """Mean cross-entropy over answer tokens: the quantity SFT minimises (sec. 3.1)."""
    rows = [encode_dialog(tokenizer, d) for d in dialogs]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    with torch.no_grad():
        return model(**batch).loss.item()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from sft.trainer import run_sft

    output_dir = tmp_path_factory.mktemp("sft")
    argv = [
        "--config",
        "recipes/tiny/sft.yaml",
        "--output_dir",
        str(output_dir),
        "--max_train_rows",
        str(TRAIN_ROWS),
        "--max_steps",
        "40",
        "--max_length",
        "128",
        "--save_steps",
        "20",
        "--logging_steps",
        "20",
        "--disable_tqdm",
        "true",
    ]
    model_args, data_args, training_args = parse_recipe((ModelArguments, DataArguments, Llama2SFTConfig), argv)
    summary = run_sft(model_args, data_args, training_args)
    return output_dir, summary, (model_args, data_args, training_args)


def training_dialogs(seed=0):
    train, _ = split_dialogs(load_dialogs(str(DEMO_SFT_DATA)), 0.05, seed)
    return train[:TRAIN_ROWS]


def test_sft_lowers_answer_loss(tiny_run, tiny_tokenizer, tiny_model):
    from transformers import AutoModelForCausalLM

    output_dir, summary, _ = tiny_run
    assert summary["train_dialogs"] == TRAIN_ROWS and summary["eval_dialogs"] == 12
    dialogs = training_dialogs()
    before = answer_loss(tiny_model, tiny_tokenizer, dialogs)
    tuned = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    after = answer_loss(tuned, tiny_tokenizer, dialogs)
    assert before > 6.0  # near ln(512): the untrained model knows nothing
    print(f"answer loss before {before:.3f}, after {after:.3f}")
    assert after < before - 2.5, (before, after)


def test_saved_model_reloads_and_answers_in_trained_format(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir, _, _ = tiny_run
    assert (output_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    dialog = training_dialogs()[0]
    prompt = encode_prompt(tokenizer, user_prompt(dialog[0]["content"]))
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=40,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    answer = out[0, len(prompt) :].tolist()
    # An answer, then </s>: what every trained answer segment looks like; no new [INST] turn, no <s>.
    assert answer[-1] == tokenizer.eos_token_id and len(answer) < 40
    markers = tokenizer.convert_tokens_to_ids(["<s>", "[INST]", "[/INST]", "<<SYS>>"])
    assert not set(answer) & set(markers)
    assert len(tokenizer.decode(answer, skip_special_tokens=True).strip()) > 0


def test_run_writes_markers_and_resumes_without_redoing_steps(tiny_run):
    from sft.trainer import run_sft

    output_dir, summary, (model_args, data_args, training_args) = tiny_run
    assert summary["resumed_from"] is None
    # every save_steps (20) of 40 steps, kept by save_total_limit 2
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-40"]
    held_out = [json.loads(line) for line in (output_dir / "held_out.jsonl").read_text().splitlines()]
    assert len(held_out) == 12 and held_out[0]["messages"][-1]["role"] == "assistant"
    marker = json.loads((output_dir / COMPLETE_MARKER).read_text())
    assert marker["train_dialogs"] == TRAIN_ROWS and marker["metrics"]["train_loss"] > 0
    again = run_sft(model_args, data_args, training_args)
    assert again["resumed_from"] == str(output_dir / "checkpoint-40")
    assert again["metrics"]["train_runtime"] < summary["metrics"]["train_runtime"]
