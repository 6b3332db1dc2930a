"""Comparison loaders (own schema, HH-RLHF, PKU-SafeRLHF), the held-out split and the paper's data mix."""

import gzip
import json
import random
from itertools import islice
from pathlib import Path

import pytest

from alignment.config import DataError, RecipeError
from alignment.data import PromptRecord, SkipCounter
from alignment.world import annotate, prompt_by_id
from reward.config import Llama2RewardConfig
from reward.data import (
    BOTH_SAFE,
    BOTH_UNSAFE,
    CHOSEN_SAFE_ONLY,
    DROPPED_UNSAFE_CHOSEN,
    Comparison,
    load_comparisons,
    mix_comparisons,
    split_comparisons,
)
from reward.trainer import load_reward_data
from rlhf.collect import world_prompt

SHARED_HH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
# Real HH-RLHF rows: the full shared file where it exists, else the 400-row sample shipped in data/.
HH_FILE = (
    SHARED_HH_FILE
    if SHARED_HH_FILE.exists()
    else (Path(__file__).resolve().parents[1] / "data" / "hh-rlhf" / "harmless-base-test.sample.jsonl.gz")
)
PKU_FILE = Path(__file__).resolve().parents[1] / "data" / "reward" / "pku_saferlhf_sample.jsonl"


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


OWN_ROWS = [
    {
        "prompt": "Name a colour.",
        "chosen": "Blue.",
        "rejected": "No.",
        "rating": "Significantly Better",
        "kind": "helpfulness",
        "prompt_id": "p1",
        "gold_gap": 0.75,
    },
    {
        "prompt": [{"role": "system", "content": "Be safe."}, {"role": "user", "content": "How to make poison?"}],
        "chosen": "I can't help with that.",
        "rejected": "Mix ...",
        "rating": "unsure",
        "kind": "safety",
        "chosen_safe": True,
        "rejected_safe": False,
    },
    {
        "prompt": "Insult me.",
        "chosen": "You are late.",
        "rejected": "You idiot.",
        "rating": 1,
        "kind": "safety",
        "chosen_safe": False,
        "rejected_safe": False,
    },
    {
        "prompt": "Help?",
        "chosen": "Here is how ...",
        "rejected": "Sure, steal it.",
        "rating": "slightly-better",
        "kind": "safety",
        "chosen_safe": True,
        "rejected_safe": True,
    },
    # chosen unsafe & rejected safe: the paper drops these pairs
    {
        "prompt": "Hack wifi?",
        "chosen": "Use aircrack.",
        "rejected": "Ask the owner.",
        "rating": "better",
        "kind": "safety",
        "chosen_safe": False,
        "rejected_safe": True,
    },
]


def test_own_schema_loads_normalises_and_drops_with_a_counted_reason(tmp_path):
    skipped = SkipCounter()
    comparisons = load_comparisons(write_jsonl(tmp_path / "c.jsonl", OWN_ROWS), skipped=skipped)
    assert [c.rating for c in comparisons] == [
        "significantly_better",
        "negligibly_better",
        "better",
        "slightly_better",
    ]
    assert [c.kind for c in comparisons] == ["helpfulness", "safety", "safety", "safety"]
    assert [c.safety_category for c in comparisons] == [None, CHOSEN_SAFE_ONLY, BOTH_UNSAFE, BOTH_SAFE]
    assert comparisons[0].prompt == [{"role": "user", "content": "Name a colour."}]
    assert comparisons[1].prompt[0] == {"role": "system", "content": "Be safe."}
    assert comparisons[1].source.endswith("c.jsonl:2")
    assert skipped.reasons == {DROPPED_UNSAFE_CHOSEN: 1}


def test_own_schema_round_trips_through_to_row(tmp_path):
    first = load_comparisons(write_jsonl(tmp_path / "a.jsonl", OWN_ROWS))
    again = load_comparisons(write_jsonl(tmp_path / "b.jsonl", [c.to_row() for c in first]))
    assert [(c.prompt, c.chosen, c.rejected, c.rating, c.kind, c.chosen_safe, c.rejected_safe) for c in again] == [
        (c.prompt, c.chosen, c.rejected, c.rating, c.kind, c.chosen_safe, c.rejected_safe) for c in first
    ]


def test_annotator_output_is_accepted(tmp_path):
    """The fields the pipeline's annotation step writes (alignment.world.annotate)."""
    row = {
        "prompt": "Tell me a fact.",
        "prompt_id": "f-3",
        "chosen": "Water boils at 100 C.",
        "rejected": "Dunno.",
        "rating": "better",
        "kind": "helpfulness",
        "chosen_safe": None,
        "rejected_safe": None,
        "gold_gap": 0.5,
        "flipped": False,
    }
    (comparison,) = load_comparisons(write_jsonl(tmp_path / "a.jsonl", [row]))
    assert (comparison.rating, comparison.kind, comparison.safety_category) == ("better", "helpfulness", None)


def test_a_borderline_prompt_judged_under_safety_guidelines_lands_in_the_safety_pool(tmp_path):
    """A collection row's annotation_kind picks the guidelines; the comparison is a "both safe" safety one."""
    row = {**prompt_by_id("kill_weeds/garden/0"), "annotation_kind": "safety"}
    record = PromptRecord(row["id"], [{"role": "user", "content": row["prompt"]}], False, row)
    prompt = world_prompt(record)
    label = annotate(prompt, prompt["gold"]["ideal"], "i can't help with that.", random.Random(0), 0.0, kind="safety")
    (comparison,) = load_comparisons(write_jsonl(tmp_path / "a.jsonl", [label]))
    assert (comparison.kind, comparison.pool, comparison.safety_category) == ("safety", "safety", "both_safe")
    with pytest.raises(RecipeError, match="field 'annotation_kind' must be helpfulness or safety, got 'harm'"):
        world_prompt(PromptRecord(row["id"], record.messages, False, {**row, "annotation_kind": "harm"}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rating": "much better"}, r"c.jsonl:2: field 'rating': unknown preference rating 'much better'"),
        ({"rating": None}, r"c.jsonl:2: field 'rating'"),
        ({"kind": "honesty"}, r"c.jsonl:2: field 'kind' must be one of helpfulness, safety, got 'honesty'"),
        ({"chosen": ""}, r"c.jsonl:2: field 'chosen' is empty"),
        ({"rejected": 3}, r"c.jsonl:2: field 'rejected' must be a string, got int"),
        ({"chosen_safe": "yes"}, r"c.jsonl:2: field 'chosen_safe' must be true or false, got 'yes'"),
        ({"kind": "safety"}, r"c.jsonl:2: missing field 'chosen_safe'"),
        (
            {"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            r"c.jsonl:2: field 'prompt' must end with the user turn",
        ),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, change, message):
    good = dict(OWN_ROWS[0])
    bad = {**good, **change}
    path = write_jsonl(tmp_path / "c.jsonl", [good, bad])
    with pytest.raises(DataError, match=message):
        load_comparisons(path)


def test_missing_fields_and_malformed_json(tmp_path):
    row = dict(OWN_ROWS[0])
    del row["rating"]
    with pytest.raises(DataError, match=r"c.jsonl:1: missing field 'rating'"):
        load_comparisons(write_jsonl(tmp_path / "c.jsonl", [row]))
    assert load_comparisons(tmp_path / "c.jsonl", rating="better")[0].rating == "better"
    with pytest.raises(DataError, match=r"m.jsonl:2: malformed JSON"):
        load_comparisons(write_jsonl(tmp_path / "m.jsonl", [OWN_ROWS[0], '{"prompt": "x",']))
    skipped = SkipCounter()
    assert len(load_comparisons(tmp_path / "m.jsonl", skip_bad_rows=False, skipped=skipped, limit=1)) == 1
    with pytest.raises(RecipeError, match="unknown comparison format 'csv'"):
        load_comparisons(tmp_path / "c.jsonl", format="csv")


def test_hh_rlhf_real_rows_round_trip():
    raw = [json.loads(line) for line in islice(gzip.open(HH_FILE, "rt", encoding="utf-8"), 200)]
    comparisons = load_comparisons(HH_FILE, "hh-rlhf", limit=150, skip_bad_rows=True)
    assert len(comparisons) == 150
    by_line = {int(c.source.rsplit(":", 1)[1]): c for c in comparisons}
    for line, c in by_line.items():
        row = raw[line - 1]
        transcript = "".join(
            f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in c.prompt
        )
        # Rebuilding the transcripts from the split gives back the original text up to whitespace at turn edges.
        for answer, original in ((c.chosen, row["chosen"]), (c.rejected, row["rejected"])):
            rebuilt = transcript + f"\n\nAssistant: {answer}"
            assert rebuilt.split() == original.split()
        assert (c.kind, c.rating, c.safety_category, c.pool) == ("safety", "better", None, "safety")
        assert c.prompt[-1]["role"] == "user"
    first = by_line[1]
    assert first.prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert len(first.prompt) == 5 and first.chosen.startswith("No, sorry!")


def test_hh_rlhf_whole_file_counts_every_dropped_row():
    skipped = SkipCounter()
    comparisons = load_comparisons(HH_FILE, "hh-rlhf", rating="slightly better", skip_bad_rows=True, skipped=skipped)
    rows, empty_answers = (2312, 4) if HH_FILE == SHARED_HH_FILE else (400, 1)
    assert len(comparisons) + skipped.total == rows  # every row is either loaded or counted
    assert skipped.reasons["empty final answer"] == empty_answers
    assert {c.rating for c in comparisons} == {"slightly_better"}


def test_hh_rlhf_bad_rows(tmp_path):
    ok = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    diverged = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hey\n\nAssistant: Go away."}
    doubled = {"chosen": "\n\nHuman: Hi\n\nHuman: Hello\n\nAssistant: Yes", "rejected": ok["rejected"]}
    path = write_jsonl(tmp_path / "helpful-base.jsonl", [ok, diverged])
    with pytest.raises(
        DataError, match=r"helpful-base.jsonl:2: fields 'chosen' and 'rejected' differ before the final"
    ):
        load_comparisons(path, "hh-rlhf")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'chosen': turn 2 is Human, expected the other speaker"):
        load_comparisons(write_jsonl(tmp_path / "d.jsonl", [doubled]), "hh-rlhf", kind="helpfulness")
    assert load_comparisons(path, "hh-rlhf", limit=1)[0].kind == "helpfulness"  # from the file name
    with pytest.raises(RecipeError, match="give the source a 'kind'"):
        load_comparisons(write_jsonl(tmp_path / "x.jsonl", [ok]), "hh-rlhf")


def test_pku_saferlhf_rows_give_a_helpfulness_and_a_safety_comparison():
    skipped = SkipCounter()
    comparisons = load_comparisons(PKU_FILE, "pku-saferlhf", skipped=skipped)
    helpful = [c for c in comparisons if c.kind == "helpfulness"]
    safety = [c for c in comparisons if c.kind == "safety"]
    assert len(helpful) == 5 and len(safety) == 4
    assert skipped.reasons == {DROPPED_UNSAFE_CHOSEN: 1}  # row 5: safer id points at the unsafe response
    assert [c.safety_category for c in safety] == [CHOSEN_SAFE_ONLY, BOTH_SAFE, BOTH_UNSAFE, BOTH_SAFE]
    assert helpful[3].chosen.startswith("Insert a tension wrench") and safety[3].chosen == "I can't help with that."
    assert all(c.chosen_safe is None for c in helpful)
    assert safety[0].source.endswith("pku_saferlhf_sample.jsonl:1[safety]")


def test_pku_saferlhf_bad_rows(tmp_path):
    row = json.loads(PKU_FILE.read_text().splitlines()[0])
    with pytest.raises(DataError, match=r"p.jsonl:1: field 'better_response_id' must be 0 or 1, got 2"):
        load_comparisons(write_jsonl(tmp_path / "p.jsonl", [{**row, "better_response_id": 2}]), "pku-saferlhf")
    del row["is_response_1_safe"]
    with pytest.raises(DataError, match=r"q.jsonl:1: missing field 'is_response_1_safe'"):
        load_comparisons(write_jsonl(tmp_path / "q.jsonl", [row]), "pku-saferlhf")


def _comparisons(n, kind, pool=None, prompt_prefix="q"):
    return [
        Comparison(
            [{"role": "user", "content": f"{prompt_prefix}{kind}{i}"}], "a", "b", "better", kind, pool=pool or kind
        )
        for i in range(n)
    ]


def test_split_is_seeded_and_by_prompt():
    comparisons = _comparisons(100, "helpfulness")
    comparisons += [Comparison(c.prompt, "c", "d", "better", "helpfulness", pool="helpfulness") for c in comparisons]
    train, test = split_comparisons(comparisons, 0.1, seed=3)
    # Each prompt is held out when hash(seed, prompt) < 0.1: 11 of these 100 prompts, both of their pairs.
    assert len(test) == 22 and len(train) == 178
    assert not {c.prompt_key() for c in train} & {c.prompt_key() for c in test}
    assert split_comparisons(comparisons, 0.1, seed=3)[1] == test
    assert split_comparisons(comparisons, 0.1, seed=4)[1] != test


def test_mix_helpfulness_rm_adds_an_equal_amount_of_other_data():
    data = _comparisons(100, "helpfulness") + _comparisons(300, "safety") + _comparisons(50, "x", pool="open_source")
    mixed, report = mix_comparisons(data, {"helpfulness": 0.5, "safety+open_source": 0.5}, "helpfulness", seed=0)
    assert report.taken == {"helpfulness": 100, "safety+open_source": 100}
    assert report.available == {"helpfulness": 100, "safety+open_source": 350}
    assert sum(c.kind == "helpfulness" for c in mixed) == 100 and len(mixed) == 200
    again, _ = mix_comparisons(data, {"helpfulness": 0.5, "safety+open_source": 0.5}, "helpfulness", seed=0)
    assert [id(c) for c in again] == [id(c) for c in mixed]


def test_mix_safety_rm_is_90_10_and_reports_shortfalls_and_unused_pools():
    data = _comparisons(900, "safety") + _comparisons(500, "helpfulness") + _comparisons(5, "x", pool="open_source")
    mixed, report = mix_comparisons(data, {"safety": 0.9, "helpfulness": 0.1}, "safety", seed=1)
    assert report.taken == {"safety": 900, "helpfulness": 100} and len(mixed) == 1000
    assert report.unused_pools == ["open_source"]
    short, report = mix_comparisons(data[:90] + data[900:905], {"safety": 0.5, "helpfulness": 0.5}, "safety", seed=1)
    assert report.wanted["helpfulness"] == 90 and report.taken["helpfulness"] == 5 and len(short) == 95
    with pytest.raises(RecipeError, match="anchor 'helpful'"):
        mix_comparisons(data, {"safety": 0.9}, "helpful", seed=0)
    with pytest.raises(RecipeError, match="pool 'safety' appears in mixture entries"):
        mix_comparisons(data, {"safety": 0.5, "safety+helpfulness": 0.5}, "safety", seed=0)


def test_held_out_prompts_are_never_trained_on_across_files_and_stay_held_out(tmp_path):
    """Iterations draw prompts from one pool with replacement, one comparison file each (the pipeline's shape)."""
    rng = random.Random(0)
    files = []
    for index in range(3):
        path = tmp_path / f"iteration{index}.jsonl"
        rows = [
            Comparison(
                [{"role": "user", "content": f"q{rng.randrange(300)}"}], f"a{index}", "b", "better", "helpfulness"
            ).to_row()
            for _ in range(256)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files.append(str(path))

    def split(paths):
        config = Llama2RewardConfig(
            output_dir=str(tmp_path / "rm"),
            comparison_files=paths,
            eval_fraction=0.1,
            report_to="none",
            mixture_ratios={"helpfulness": 1.0},
            mixture_anchor="helpfulness",
        )
        train, test, _ = load_reward_data(config)
        return {c.prompt_key() for c in train}, {c.prompt_key() for c in test}

    train, test = split(files)
    assert test and not train & test
    _, test_before = split(files[:2])
    assert test_before <= test  # a prompt held out at an earlier iteration is still held out
