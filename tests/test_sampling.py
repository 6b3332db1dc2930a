"""The sampling engine: sample layout, stop handling, distinct K draws, seeding, and the shared prefill."""

import warnings

import pytest
import torch

from alignment.chat import encode_prompt, user_prompt
from alignment.config import RecipeError
from alignment.models import load_causal_lm, load_tokenizer
from rlhf.sampling import (
    HFSamplingEngine,
    SamplingEngine,
    SamplingParams,
    cut_at_stop,
    left_pad,
    make_sampling_engine,
)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer("builtin:tiny-llama")
    model = load_causal_lm("builtin:tiny-llama")
    prompts = [
        encode_prompt(tokenizer, user_prompt(text))
        for text in [
            "What is 18 minus 14?",
            "Tell me the capital of Portugal.",
            "How many letters are in the word garden?",
        ]
    ]
    return model, tokenizer, prompts


def test_params_are_checked():
    assert SamplingParams() == SamplingParams(1, 0.6, 0.9, 128, None)  # Llama 2 defaults
    for bad in (dict(num_samples=0), dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0)):
        with pytest.raises(RecipeError):
            SamplingParams(**bad)


def test_cut_at_stop_keeps_the_first_stop_token_and_drops_padding():
    assert cut_at_stop([5, 6, 3, 0, 0], {3}) == ([5, 6, 3], True)
    assert cut_at_stop([3, 3], {3}) == ([3], True)
    assert cut_at_stop([5, 6, 7], {3}) == ([5, 6, 7], False)
    assert cut_at_stop([5, 9, 6], {3, 9}) == ([5, 9], True)


def test_left_pad_masks_the_padding():
    ids, mask = left_pad([[7, 8, 9], [5]], pad_id=0, device="cpu")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_samples_layout_stops_and_text(tiny):
    model, tokenizer, prompts = tiny
    engine = HFSamplingEngine(model, tokenizer, batch_size=8)  # 2 prompts x K=4 per batch: 2 batches
    assert isinstance(engine, SamplingEngine)
    samples = engine.generate(
        prompts, SamplingParams(num_samples=4, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=0)
    )
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(p, k) for p in range(3) for k in range(4)]
    stop = set(engine.stop_ids)
    for s in samples:
        assert s.prompt_ids == prompts[s.prompt_index]
        assert 1 <= len(s.response_ids) <= 10
        assert s.finished == (s.response_ids[-1] in stop)
        assert not any(t in stop for t in s.response_ids[:-1])
        if not s.finished:
            assert len(s.response_ids) == 10
        expected = tokenizer.decode([t for t in s.response_ids if t not in stop], skip_special_tokens=True).strip()
        assert s.text == expected


def test_k_samples_are_distinct_draws_and_seeded_runs_repeat(tiny):
    model, tokenizer, prompts = tiny
    engine = HFSamplingEngine(model, tokenizer, batch_size=32)
    params = SamplingParams(num_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=123)
    first = engine.generate(prompts, params)
    for p in range(3):
        responses = [tuple(s.response_ids) for s in first if s.prompt_index == p]
        assert len(set(responses)) == 8  # an untrained 512-token model: 8 equal answers would mean copies
    torch.manual_seed(999)  # the engine's seed, not the global state, decides
    again = engine.generate(prompts, params)
    assert [s.response_ids for s in again] == [s.response_ids for s in first]
    other = engine.generate(prompts, SamplingParams(8, 1.0, 1.0, 8, seed=124))
    assert [s.response_ids for s in other] != [s.response_ids for s in first]


def test_seeding_leaves_the_global_generator_alone(tiny):
    model, tokenizer, prompts = tiny
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    HFSamplingEngine(model, tokenizer).generate(prompts[:1], SamplingParams(2, 1.0, 1.0, 4, seed=1))
    assert torch.equal(torch.rand(3), expected)


def test_shared_prefill_matches_plain_generate_and_prefills_each_prompt_once(tiny):
    model, tokenizer, prompts = tiny
    params = SamplingParams(num_samples=3, temperature=0.0, max_new_tokens=6)
    plain = HFSamplingEngine(model, tokenizer, share_prefill=False).generate(prompts, params)

    shapes = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        with warnings.catch_warnings():
            # The cache goes to generate by its supported name: a deprecated argument warns (FutureWarning).
            warnings.simplefilter("error", FutureWarning)
            shared = HFSamplingEngine(model, tokenizer).generate(prompts, params)
    finally:
        hook.remove()
    assert [s.response_ids for s in shared] == [s.response_ids for s in plain]  # greedy: same tokens
    width = max(len(p) for p in prompts)
    assert shapes[0] == (3, width - 1)  # one prefill of the 3 prompts
    assert all(shape[1] == 1 and shape[0] == 9 for shape in shapes[1:])  # then only single tokens for 3 x K rows


def test_backend_choice():
    with pytest.raises(RecipeError, match="unknown sampling_backend"):
        make_sampling_engine("tgi", None, None)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RecipeError, match="vllm"):
            make_sampling_engine("vllm", "builtin:tiny-llama", None)
