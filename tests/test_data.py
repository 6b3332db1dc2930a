"""Data boundary: a bad row fails with file:line and the field, or is counted and skipped when allowed."""

import json

import pytest

from alignment.config import DataError
from alignment.data import (
    SkipCounter,
    append_jsonl,
    atomic_write_json,
    load_dialogs,
    load_prompts,
    read_jsonl_tolerant,
    read_records,
)

GOOD = {"prompt": "What is 2 plus 2?", "completion": "2 plus 2 is 4."}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def jsonl(tmp_path, rows, name="data.jsonl"):
    return write_lines(tmp_path / name, [r if isinstance(r, str) else json.dumps(r) for r in rows])


def test_prompt_completion_messages_and_system_rows(tmp_path):
    path = jsonl(
        tmp_path,
        [
            GOOD,
            {"prompt": "Hi", "completion": "Hello.", "system": "Be brief."},
            {
                "messages": [
                    {"role": "user", "content": "A"},
                    {"role": "assistant", "content": "B"},
                    {"role": "user", "content": "C"},
                    {"role": "assistant", "content": "D"},
                ]
            },
        ],
    )
    dialogs = load_dialogs(path)
    assert dialogs[0] == [
        {"role": "user", "content": GOOD["prompt"]},
        {"role": "assistant", "content": GOOD["completion"]},
    ]
    assert [m["role"] for m in dialogs[1]] == ["system", "user", "assistant"]
    assert [m["content"] for m in dialogs[2]] == ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "Hi", "completion": ', r"data.jsonl:2: malformed JSON"),
        ('["prompt", "completion"]', r"data.jsonl:2: a row must be a JSON object, got list"),
        ('{"completion": "Hello."}', r"data.jsonl:2: missing field 'prompt'"),
        ('{"prompt": "Hi"}', r"data.jsonl:2: missing field 'completion'"),
        ('{"prompt": "Hi", "completion": 7}', r"data.jsonl:2: field 'completion' must be a string, got int"),
        ('{"prompt": "Hi", "completion": "   "}', r"data.jsonl:2: field 'completion' is empty"),
        ('{"text": "Hi"}', r"data.jsonl:2: missing field 'messages' \(or 'prompt' and 'completion'\)"),
        (
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}',
            r"data.jsonl:2: field 'messages\[1\].role' must be one of system, user, assistant, got 'bot'",
        ),
        (
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}',
            r"data.jsonl:2: field 'messages\[1\].content' is empty",
        ),
        (
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Yo"}]}',
            r"data.jsonl:2: field 'messages\[1\].role' should be 'assistant'",
        ),
        (
            '{"messages": [{"role": "user", "content": "Hi"}]}',
            r"data.jsonl:2: field 'messages' must end with an assistant answer",
        ),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, bad_line, message):
    path = jsonl(tmp_path, [GOOD, bad_line, GOOD])
    with pytest.raises(DataError, match=message):
        load_dialogs(path)


def test_blank_lines_keep_line_numbers(tmp_path):
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD), "", json.dumps({"prompt": "Hi"})])
    with pytest.raises(DataError, match=r"data.jsonl:3: missing field 'completion'"):
        load_dialogs(path)


def test_skip_bad_rows_counts_each_reason(tmp_path):
    path = jsonl(
        tmp_path,
        [
            GOOD,
            '{"prompt": "Hi"}',
            {"prompt": "Hi", "completion": ""},
            GOOD,
            {"prompt": "Yo"},
        ],
    )
    skipped = SkipCounter()
    dialogs = load_dialogs(path, skip_bad_rows=True, skipped=skipped)
    assert len(dialogs) == 2
    assert skipped.total == 3
    assert dict(skipped.reasons) == {"missing field 'completion'": 2, "field 'completion' is empty": 1}
    assert skipped.summary() == "2 missing field 'completion', 1 field 'completion' is empty"
    # malformed JSON is not a row that can be skipped: the file itself is broken
    broken = jsonl(tmp_path, [GOOD, "{not json"], name="broken.jsonl")
    with pytest.raises(DataError, match=r"broken.jsonl:2: malformed JSON"):
        load_dialogs(broken, skip_bad_rows=True, skipped=SkipCounter())


def test_json_list_files_and_unknown_formats(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, {"prompt": "Hi"}]))
    with pytest.raises(DataError, match=r"data.json:2: missing field 'completion'"):
        load_dialogs(str(path))
    (tmp_path / "data.csv").write_text("prompt,completion\n")
    with pytest.raises(DataError, match=r"data.csv: unknown data format"):
        list(read_records(tmp_path / "data.csv"))
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        list(read_records(tmp_path / "missing.jsonl"))


def test_prompts_rows_and_errors(tmp_path):
    path = jsonl(
        tmp_path,
        [
            {"prompt": "Hi", "id": "a"},
            {
                "prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                "is_safety_prompt": True,
                "source": "x",
            },
        ],
    )
    first, second = load_prompts(path)
    assert (first.id, first.messages, first.is_safety_prompt) == ("a", [{"role": "user", "content": "Hi"}], False)
    # a trailing answer is dropped: the prompt is what the model must answer
    assert (second.id, second.messages, second.is_safety_prompt, second.meta) == (
        "2",
        [{"role": "user", "content": "Q"}],
        True,
        {"source": "x"},
    )
    bad = jsonl(tmp_path, [{"prompt": "Hi", "is_safety_prompt": "yes"}], name="bad.jsonl")
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'is_safety_prompt' must be true or false"):
        load_prompts(bad)
    duplicate = jsonl(tmp_path, [{"prompt": "Hi", "id": 1}, {"prompt": "Yo", "id": "1"}], name="dup.jsonl")
    with pytest.raises(DataError, match=r"duplicate prompt id '1'"):
        load_prompts(duplicate)


def test_append_only_log_drops_only_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"i": 0}, {"i": 1}])
    with open(log, "a") as handle:
        handle.write('{"i": 2')  # a writer killed mid-line
    assert read_jsonl_tolerant(log) == [{"i": 0}, {"i": 1}]
    log.write_text('{"i": 0}\n{"i": \n{"i": 2}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: malformed JSON in the middle"):
        read_jsonl_tolerant(log)
    assert read_jsonl_tolerant(tmp_path / "absent.jsonl") == []


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    atomic_write_json(path, {"step": 3})
    assert json.loads(path.read_text()) == {"step": 3}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left behind
