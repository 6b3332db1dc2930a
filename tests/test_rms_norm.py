"""`alignment.rms_norm`: the written-out RMSNorm backward gives transformers' outputs and gradients."""

import copy

import torch

from alignment.models import load_causal_lm
from alignment.rms_norm import use_fast_rms_norm


def test_a_model_with_the_fast_norm_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = load_causal_lm("builtin:tiny-llama")
    with torch.no_grad():  # non-trivial norm weights
        for module in plain.modules():
            if type(module).__name__ == "LlamaRMSNorm":
                module.weight.uniform_(0.5, 1.5)
    fast = copy.deepcopy(plain)
    norms = use_fast_rms_norm(fast)
    assert norms == 2 * plain.config.num_hidden_layers + 1
    ids = torch.randint(3, 1000, (4, 15), generator=torch.Generator().manual_seed(1))
    outputs = [model(input_ids=ids).logits for model in (plain, fast)]
    assert torch.equal(outputs[0], outputs[1])  # the same ops in the same order
    for output in outputs:
        (output * torch.linspace(-1, 1, output.shape[-1])).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6 * float(a.grad.abs().max()), msg=name)


def test_the_fast_norm_runs_only_where_a_float32_gradient_is_needed(monkeypatch):
    import alignment.rms_norm

    calls = []
    real = alignment.rms_norm._RMSNorm.apply
    monkeypatch.setattr(alignment.rms_norm._RMSNorm, "apply", lambda *a: calls.append(1) or real(*a))
    model = load_causal_lm("builtin:tiny-llama")
    use_fast_rms_norm(model)
    norm = model.model.norm
    x = torch.randn(2, 3, model.config.hidden_size)
    with torch.no_grad():
        norm(x)
    norm.weight.requires_grad_(False)
    norm(x)  # nothing needs a gradient
    norm.double()
    norm.weight.requires_grad_(True)
    norm(x.double())  # float64
    assert calls == []
    norm.float()
    norm(x)
    assert calls == [1]
