"""Shared fixtures: the project's offline models, loaded once per test session.

Fixtures other test files may use:
- `tiny_tokenizer`, `tiny_model`: builtin:tiny-llama (fp32, eval mode). The model is shared: do not train it
  in place; copy it (`copy.deepcopy`) or load a fresh one when a test changes weights.
- `smollm2_tokenizer`: the ChatML tokenizer of builtin:smollm2-135m-instruct (converted once and cached).
"""

from __future__ import annotations

import pytest
import torch

# The CI and dev machines have 2 cores shared by several test runs: OpenMP threads spinning against each other
# made a tiny-model step 30-60x slower than one thread does (measured; see BENCHMARKS.md, SFT).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignment.models import load_tokenizer

    return load_tokenizer("builtin:tiny-llama")


@pytest.fixture(scope="session")
def tiny_model():
    from alignment.models import load_causal_lm

    return load_causal_lm("builtin:tiny-llama").eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from alignment.models import load_tokenizer

    return load_tokenizer("builtin:smollm2-135m-instruct")
