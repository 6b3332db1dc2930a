"""`alignment.attention`: the short-sequence attention gives SDPA's outputs and gradients, and hands SDPA every
call it does not serve."""

import copy

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import alignment.attention
from alignment.attention import SHORT_CAUSAL, SHORT_CAUSAL_MAX_TOKENS, use_short_causal_attention
from alignment.models import load_causal_lm


def _pair():
    torch.manual_seed(0)
    sdpa = load_causal_lm("builtin:tiny-llama")
    short = copy.deepcopy(sdpa)
    use_short_causal_attention(short)
    return sdpa, short


def _grads(model):
    return [p.grad for p in model.parameters()]


def test_unpadded_rows_give_sdpa_outputs_and_gradients():
    sdpa, short = _pair()
    assert short.config._attn_implementation == SHORT_CAUSAL
    ids = torch.randint(3, 1000, (6, 20), generator=torch.Generator().manual_seed(1))
    outputs = [model(input_ids=ids).logits for model in (sdpa, short)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)
    for output in outputs:
        (output * torch.linspace(-1, 1, output.shape[-1])).sum().backward()
    for got, expected in zip(_grads(short), _grads(sdpa)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_left_padded_prefill_and_cached_decoding_give_sdpa_tokens_and_logits():
    sdpa, short = _pair()
    ids = torch.randint(3, 1000, (4, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :9] = 0  # a row with three real tokens
    ids = ids.masked_fill(mask == 0, 0)
    runs = [
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=10,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
        for model in (sdpa, short)
    ]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for got, expected in zip(runs[1].logits, runs[0].logits):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # Real positions of a padded training forward, with their gradients.
    sdpa.zero_grad()
    short.zero_grad()
    outputs = [model(input_ids=ids, attention_mask=mask).logits[mask.bool()] for model in (sdpa, short)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-5)
    for output in outputs:
        output.sum().backward()
    for got, expected in zip(_grads(short), _grads(sdpa)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize(
    "case", ["longer", "chunk after a cache", "float mask", "dropout", "sliding window", "uneven heads"]
)
def test_calls_it_does_not_serve_go_to_sdpa(monkeypatch, case):
    calls = []

    def spy(*args, **kwargs):
        calls.append(case)
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(alignment.attention, "sdpa_attention_forward", spy)
    module = torch.nn.Module()  # the attention module: only `training` and `is_causal` are read
    module.is_causal = True
    module.train(case == "dropout")
    length = SHORT_CAUSAL_MAX_TOKENS + 1 if case == "longer" else 8
    keys = length + 4 if case == "chunk after a cache" else length
    heads = 3 if case == "uneven heads" else 4
    query, key, value = torch.randn(2, 4, length, 16), torch.randn(2, heads, keys, 16), torch.randn(2, heads, keys, 16)
    mask = torch.zeros(2, 1, length, keys) if case == "float mask" else None
    kwargs = {"sliding_window": 4} if case == "sliding window" else {}
    dropout = 0.1 if case == "dropout" else 0.0
    if case == "uneven heads":
        with pytest.raises(RuntimeError):  # SDPA's own error for heads that do not divide
            alignment.attention.short_causal_attention(module, query, key, value, mask, dropout=dropout, **kwargs)
    else:
        alignment.attention.short_causal_attention(module, query, key, value, mask, dropout=dropout, **kwargs)
    assert calls == [case]


def test_a_served_call_equals_sdpa_with_grouped_heads():
    module = torch.nn.Module()
    module.is_causal = True
    module.num_key_value_groups = 2
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(3, 4, 10, 16, generator=generator)
    key, value = torch.randn(3, 2, 10, 16, generator=generator), torch.randn(3, 2, 10, 16, generator=generator)
    got, _ = alignment.attention.short_causal_attention(module, query, key, value, None, scaling=0.3)
    expected, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_only_sdpa_models_are_switched():
    model = load_causal_lm("builtin:tiny-llama", attn_implementation="eager")
    use_short_causal_attention(model)
    assert model.config._attn_implementation == "eager"
