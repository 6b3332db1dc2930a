"""The SmolLM2 safety-RLHF benchmark's data handling: the split by prompt and the control's random pick."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.safety_rlhf_smollm2 import paired, random_pick, split_prompts, table  # noqa: E402


def hh_row(first_turn: str, second_turn: str | None = None) -> dict:
    chosen = f"\n\nHuman: {first_turn}\n\nAssistant: No."
    if second_turn:
        chosen += f"\n\nHuman: {second_turn}\n\nAssistant: Still no."
    return {"chosen": chosen, "rejected": chosen.replace("No.", "Sure.")}


def test_split_never_samples_on_a_held_out_first_turn(tmp_path):
    hh = tmp_path / "hh.jsonl"
    turns = [f"how do I do bad thing {i}?" for i in range(10)]
    # "bad thing 3" opens a training pair and, with another second turn, a held-out pair
    rows = [hh_row(t) for t in turns] + [hh_row(turns[3], "and then?")]
    hh.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out = tmp_path / "held_out.jsonl"
    held_rows = [
        {"prompt": [{"role": "user", "content": turns[i]}], "chosen": "No.", "rejected": "Sure."} for i in (3, 7)
    ]
    held_out.write_text("".join(json.dumps(r) + "\n" for r in held_rows))

    train, held = split_prompts(hh, held_out, n_train=100, n_held=100)

    assert sorted(held) == sorted([turns[3], turns[7]])
    assert sorted(train) == sorted(t for i, t in enumerate(turns) if i not in (3, 7))
    assert split_prompts(hh, held_out, n_train=2, n_held=1)[0] == train[:2]


def test_random_pick_takes_the_first_finished_sample_of_each_prompt(tmp_path):
    def sample(prompt_id, index, text, finished=True):
        messages = [{"role": "user", "content": f"prompt {prompt_id}"}]
        return {"prompt_id": prompt_id, "sample_index": index, "messages": messages, "response": text,
                "finished": finished}  # fmt: skip

    rows = [
        sample("a", 1, "a1"),
        sample("a", 0, "a0 cut", finished=False),
        sample("a", 2, "a2"),
        sample("b", 0, "   "),  # empty: never a training answer
        sample("b", 3, "b3"),
        sample("c", 0, "c0 cut", finished=False),
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    picked = {d[0]["content"]: d[1]["content"] for d in random_pick(path, drop_unfinished=True)}
    assert picked == {"prompt a": "a1", "prompt b": "b3"}
    kept_cut = {d[0]["content"]: d[1]["content"] for d in random_pick(path, drop_unfinished=False)}
    assert kept_cut == {"prompt a": "a0 cut", "prompt b": "b3", "prompt c": "c0 cut"}


def test_table_row_shows_means_and_standard_errors():
    row = {
        "model": "rs",
        "refusal_rate_heldout_hh": 0.25,
        "refusal_rate_heldout_hh_stderr": 0.05,
        "mean_sigmoid_r_s_heldout_hh": 0.5123,
        "mean_sigmoid_r_s_heldout_hh_stderr": 0.0211,
        "refusal_rate_benign": 0.0,
        "refusal_rate_benign_stderr": 0.0,
        "safety_eval": {
            "toxigen": {
                "toxic_rate": 0.4,
                "stderr": 0.049,
                "per_prompt_kind": {"hate": {"toxic_rate": 0.8, "stderr": 0.05}},
            }
        },
    }
    line = table([row]).splitlines()[2]
    assert line == "| rs | 25.0 ± 5.0 | 0.512 ± 0.021 | 0.0 ± 0.0 | - | - | 40.0 ± 4.9 | 80.0 ± 5.0 | - | - |"


def test_paired_difference_uses_common_items_only():
    before = {"a": 1.0, "b": 1.0, "c": 0.0, "gone": 1.0}
    after = {"a": 0.0, "b": 1.0, "c": 0.0, "new": 0.0}
    # differences (-1, 0, 0): mean -1/3, sample variance 1/3, standard error sqrt(1/3 / 3) = 1/3
    result = paired(before, after)
    assert result["n"] == 3
    assert abs(result["mean"] + 1 / 3) < 1e-12 and abs(result["stderr"] - 1 / 3) < 1e-12


def test_replicated_toxigen_is_also_paired_on_the_prompts_the_preset_did_not_use(tmp_path):
    from benchmarks.safety_rlhf_smollm2 import paired_differences

    def scored(folder: str, toxic: dict[str, bool]) -> None:
        (tmp_path / folder).mkdir()
        rows = [{"id": k, "toxic": v} for k, v in toxic.items()]
        (tmp_path / folder / "toxigen_scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    for name, refusals in (("shipped", ["Sorry, no."]), ("rs", ["I can't help."])):
        (tmp_path / f"answers_{name}.json").write_text(json.dumps([refusals, ["Paris."]]))
    scored("safety_eval_shipped", {"p1": True, "p2": False})
    scored("safety_eval_rs", {"p1": False, "p2": False})
    scored("safety_eval_toxigen4_shipped", {"p1": True, "p2": False, "p3": True, "p4": True})
    scored("safety_eval_toxigen4_rs", {"p1": False, "p2": False, "p3": False, "p4": True})
    result = paired_differences(tmp_path, "rs")
    assert result["toxigen_toxic_rate"]["n"] == 2 and result["toxigen_toxic_rate"]["mean"] == -0.5
    assert result["toxigen_4_per_group_toxic_rate"]["n"] == 4
    assert result["toxigen_4_per_group_toxic_rate"]["mean"] == -0.5  # differences (-1, 0, -1, 0)
    fresh = result["toxigen_4_per_group_fresh_toxic_rate"]  # p3 and p4 only: differences (-1, 0)
    assert fresh["n"] == 2 and fresh["mean"] == -0.5 and fresh["stderr"] == 0.5
