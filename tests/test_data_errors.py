"""Every data loader answers a broken file in one line naming the file, the line and the field: bytes that are not
UTF-8, a malformed JSON line, a missing field, and an empty file (which used to end in an error that named
nothing)."""

from __future__ import annotations

import gzip
import json
import runpy
import sys
from pathlib import Path

import pytest

from alignment.config import DataError, RecipeError
from alignment.data import load_dialogs, load_prompts, read_jsonl_tolerant, read_records
from reward.data import load_comparisons
from sft.pretrain import PretrainArguments, corpus_texts

REPO = Path(__file__).resolve().parents[1]
PKU_ROW = json.loads((REPO / "data" / "reward" / "pku_saferlhf_sample.jsonl").read_text().splitlines()[0])
HH_ROW = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
COMPARISON = {
    "prompt": "Name a colour.",
    "chosen": "Blue.",
    "rejected": "No.",
    "rating": "better",
    "kind": "helpfulness",
}

# loader name: (load(path), a good row, the same row with one field missing, the field's message)
LOADERS = {
    "sft dialogs": (
        load_dialogs,
        {"prompt": "2 plus 2?", "completion": "4."},
        {"prompt": "2 plus 2?"},
        "missing field 'completion'",
    ),
    "prompts": (load_prompts, {"prompt": "Hi", "id": "a"}, {"id": "a"}, "missing field 'prompt'"),
    "comparisons": (
        load_comparisons,
        COMPARISON,
        {k: v for k, v in COMPARISON.items() if k != "chosen"},
        "missing field 'chosen'",
    ),
    "hh-rlhf": (
        lambda p: load_comparisons(p, "hh-rlhf", kind="helpfulness"),
        HH_ROW,
        {"chosen": HH_ROW["chosen"]},
        "missing field 'rejected'",
    ),
    "pku-saferlhf": (
        lambda p: load_comparisons(p, "pku-saferlhf"),
        PKU_ROW,
        {k: v for k, v in PKU_ROW.items() if k != "is_response_1_safe"},
        "missing field 'is_response_1_safe'",
    ),
    "pretraining corpus": (
        lambda p: corpus_texts(PretrainArguments(corpus=str(p))),
        {"text": "a document"},
        {"txt": "a document"},
        "missing field 'text'",
    ),
}


def write(path: Path, lines: list[bytes | dict | str]) -> Path:
    raw = b"".join(
        (line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()) + b"\n"
        for line in lines
    )
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def load_all(load, path):
    result = load(path)
    return list(result) if not isinstance(result, list) else result


@pytest.mark.parametrize("loader", list(LOADERS))
def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path, loader):
    load, good, _, _ = LOADERS[loader]
    path = write(tmp_path / "data.jsonl", [good, b'{"note": "caf\xe9"}'])  # latin-1 e-acute: byte 14
    with pytest.raises(DataError) as error:
        load_all(load, path)
    assert str(error.value) == f"{path}:2: not valid UTF-8 (byte 0xe9 at column 14); save the file as UTF-8"


@pytest.mark.parametrize("loader", list(LOADERS))
def test_malformed_json_names_file_and_line(tmp_path, loader):
    load, good, _, _ = LOADERS[loader]
    path = write(tmp_path / "data.jsonl", [good, good, '{"prompt": "unterminated'])
    with pytest.raises(DataError, match=r"^" + str(path) + r":3: malformed JSON \(Unterminated string"):
        load_all(load, path)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_missing_field_names_file_line_and_field(tmp_path, loader):
    load, good, missing, message = LOADERS[loader]
    path = write(tmp_path / "data.jsonl", [good, "", missing])  # a blank line keeps the numbering
    with pytest.raises(DataError) as error:
        load_all(load, path)
    assert str(error.value).startswith(f"{path}:3: {message}")


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("content", [b"", b"\n\n"], ids=["empty", "blank lines"])
def test_an_empty_file_is_named(tmp_path, loader, content):
    load = LOADERS[loader][0]
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        load_all(load, path)
    assert str(error.value) == f"{path}: no rows (the file is empty)"


def test_other_formats_locate_bad_bytes_too(tmp_path):
    gz = write(tmp_path / "data.jsonl.gz", [COMPARISON, COMPARISON, b'{"chosen": "\xff"}'])
    with pytest.raises(DataError, match=r"data.jsonl.gz:3: not valid UTF-8 \(byte 0xff at column 13\)"):
        load_comparisons(gz)
    listed = tmp_path / "data.json"
    listed.write_bytes(b'[\n{"prompt": "Hi"},\n{"prompt": "caf\xe9"}\n]\n')
    with pytest.raises(DataError, match=r"data.json:3: not valid UTF-8 \(byte 0xe9 at column 16\)"):
        load_prompts(str(listed))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match=r"empty.json: no rows \(the file is empty\)"):
        load_prompts(str(tmp_path / "empty.json"))
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken.jsonl.gz: not a readable gzip file"):
        load_comparisons(tmp_path / "broken.jsonl.gz")


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "Hi"}).encode() + b"\n")
    assert [p.messages for p in load_prompts(str(path))] == [[{"role": "user", "content": "Hi"}]]


def test_read_records_alone_still_allows_an_empty_file(tmp_path):
    (tmp_path / "samples.jsonl").write_text("")
    assert list(read_records(tmp_path / "samples.jsonl")) == []
    with pytest.raises(DataError, match=r"samples.jsonl: no rows \(the file is empty\)"):
        list(read_records(tmp_path / "samples.jsonl", allow_empty=False))


def test_append_only_log_drops_a_last_line_cut_inside_a_character_but_not_a_bad_middle_line(tmp_path):
    path = tmp_path / "log.jsonl"
    whole = json.dumps({"text": "caf\u00e9"}, ensure_ascii=False).encode()
    path.write_bytes(whole + b"\n" + whole[:-3] + b"\n")  # the kill cut the second e-acute in half
    assert read_jsonl_tolerant(path) == [{"text": "caf\u00e9"}]
    path.write_bytes(whole + b"\n" + b'{"text": "caf\xe9"}\n' + whole + b"\n")
    with pytest.raises(DataError, match=r"log.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 14\)"):
        read_jsonl_tolerant(path)


def run_stage(monkeypatch, script: str, args: list[str]) -> int:
    argv = [str(REPO / "recipes" / script), *args]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(argv[0], run_name="__main__")
    return exit_info.value.code


def test_reward_stage_reports_a_non_utf8_comparison_file_in_one_line(tmp_path, monkeypatch, capsys):
    path = write(tmp_path / "comparisons.jsonl", [COMPARISON, b'{"chosen": "caf\xe9"}'])
    code = run_stage(
        monkeypatch,
        "reward.py",
        [
            "--comparison_files",
            str(path),
            "--model_name_or_path",
            "./no-such-model",
            "--output_dir",
            str(tmp_path / "rm"),
        ],
    )
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {path}:2: not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"
    ]


def test_sft_stage_names_an_empty_data_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "sft.jsonl").write_text("")
    code = run_stage(
        monkeypatch,
        "sft.py",
        [
            "--dataset_name",
            str(tmp_path / "sft.jsonl"),
            "--model_name_or_path",
            "./no-such-model",
            "--output_dir",
            str(tmp_path / "sft"),
        ],
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {tmp_path / 'sft.jsonl'}: no rows (the file is empty)"]


def test_sft_names_the_data_file_when_splitting_leaves_no_rows(tmp_path, monkeypatch):
    from sft.config import DataArguments, Llama2SFTConfig, ModelArguments
    from sft.trainer import run_sft

    path = write(tmp_path / "sft.jsonl", [{"prompt": "2 plus 2?", "completion": "4."}, {"prompt": "x"}])
    data_args = DataArguments(dataset_name=str(path), skip_bad_rows=True, eval_fraction=0.9, global_batch_size=1)
    training_args = Llama2SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, bf16=False)
    with pytest.raises(RecipeError) as error:
        run_sft(ModelArguments(model_name_or_path="builtin:tiny-llama"), data_args, training_args)
    assert str(error.value).startswith(
        f"{path}: no training rows left after loading and splitting (1 loaded, 1 skipped as bad, eval_fraction 0.9"
    )
