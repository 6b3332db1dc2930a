"""The sampling engine: K answers per prompt from a policy, for rejection sampling, PPO and preference data.

Generate, score and learn talk through plain data (the generate / score / learn split of torchtune and
OpenRLHF): an engine takes prompt token ids and returns `Sample`s; it knows nothing of reward models or
training. Two backends share the interface:

- `HFSamplingEngine`: transformers' `generate`, batched with left padding. Each prompt is prefilled once
  and its KV cache copied K times before decoding, because `generate(num_return_sequences=K)` repeats the
  prompt K times *before* the prefill and so computes every prompt K times (benchmarks/sampling_throughput.py
  measures the difference).
- `VLLMSamplingEngine`: vLLM, which shares prompt blocks across the K samples by itself; optional.

Defaults follow the released Llama 2 code's `chat_completion`: temperature 0.6, top-p 0.9.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from alignment.config import RecipeError
from alignment.models import resolve_model_path, stop_token_ids

SAMPLING_BACKENDS = ("hf", "vllm")


@dataclass
class SamplingParams:
    num_samples: int = 1  # K per prompt
    temperature: float = 0.6  # Llama 2 default sampling (the released `llama` code); 0 means greedy
    top_p: float = 0.9
    max_new_tokens: int = 128
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise RecipeError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.temperature < 0:
            raise RecipeError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RecipeError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise RecipeError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class Sample:
    prompt_index: int  # index into the prompts list passed in
    sample_index: int  # 0..K-1
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, stop token included if produced, no padding
    text: str  # decoded response without special/stop tokens, stripped
    finished: bool  # True when a stop token ended it (False = truncated at max_new_tokens)


@runtime_checkable
class SamplingEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Sample]: ...


def cut_at_stop(token_ids: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """The response up to and including its first stop token, and whether one was produced."""
    for position, token in enumerate(token_ids):
        if token in stop_ids:
            return token_ids[: position + 1], True
    return list(token_ids), False


def decode_response(tokenizer, response_ids: list[int], stop_ids: set[int]) -> str:
    return tokenizer.decode([t for t in response_ids if t not in stop_ids], skip_special_tokens=True).strip()


def make_sample(
    tokenizer, stop_ids: set[int], prompt_index: int, sample_index: int, prompt_ids, generated: list[int]
) -> Sample:
    """A Sample from a backend's generated tokens: cut at the first stop token and decoded."""
    response_ids, finished = cut_at_stop(generated, stop_ids)
    return Sample(
        prompt_index=prompt_index,
        sample_index=sample_index,
        prompt_ids=list(prompt_ids),
        response_ids=response_ids,
        text=decode_response(tokenizer, response_ids, stop_ids),
        finished=finished,
    )


@contextlib.contextmanager
def seeded(seed: int | None):
    """Seed torch's global generator (which `generate` samples from) without disturbing the caller's stream."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def left_pad(prompt_ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


class HFSamplingEngine:
    """transformers `generate`, batched with left padding, stopping at `alignment.models.stop_token_ids`.

    `batch_size` counts sequences decoded together (prompts x K); a prompt's K samples always share a
    batch. `share_prefill=False` falls back to `generate(num_return_sequences=K)` (the benchmark baseline).
    """

    def __init__(self, model, tokenizer, batch_size: int = 32, share_prefill: bool = True, progress: bool = False):
        if batch_size < 1:
            raise RecipeError(f"generation batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        self.progress = progress
        self.stop_ids = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        if any(not ids for ids in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        k = params.num_samples
        per_batch = max(1, self.batch_size // k)
        starts = range(0, len(prompt_ids), per_batch)
        if self.progress:
            starts = tqdm(starts, desc="sampling", unit="batch")
        samples: list[Sample] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with seeded(params.seed), torch.inference_mode():
                for start in starts:
                    chunk = prompt_ids[start : start + per_batch]
                    samples += self._generate_chunk(chunk, start, params)
        finally:
            self.model.train(was_training)
        return samples

    def _generation_kwargs(self, params: SamplingParams) -> dict:
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            # A checkpoint's generation_config may carry a repetition penalty or top-k that would silently
            # change the distribution; the Llama 2 reference sampler uses only temperature and top-p.
            repetition_penalty=1.0,
        )
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        return kwargs

    def _generate_chunk(self, chunk: list[list[int]], offset: int, params: SamplingParams) -> list[Sample]:
        k = params.num_samples
        device = self.model.device
        input_ids, attention_mask = left_pad(chunk, self.pad_id, device)
        kwargs = self._generation_kwargs(params)
        if self.share_prefill and k > 1 and input_ids.shape[1] > 1:
            output = self._generate_shared_prefill(input_ids, attention_mask, k, kwargs)
        elif not kwargs["do_sample"]:
            # Greedy decoding refuses num_return_sequences > 1; the K copies are identical anyway.
            output = self.model.generate(
                input_ids=input_ids.repeat_interleave(k, dim=0),
                attention_mask=attention_mask.repeat_interleave(k, dim=0),
                **kwargs,
            )
        else:
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=k, **kwargs
            )
        generated = output[:, input_ids.shape[1] :].tolist()
        stop = set(self.stop_ids)
        samples = []
        for row, tokens in enumerate(generated):
            prompt_index, sample_index = divmod(row, k)
            samples.append(
                make_sample(self.tokenizer, stop, offset + prompt_index, sample_index, chunk[prompt_index], tokens)
            )
        return samples

    def _generate_shared_prefill(self, input_ids, attention_mask, k: int, kwargs: dict) -> torch.Tensor:
        """Prefill all but the last prompt token once, repeat the cache K times, let `generate` continue.

        `generate` feeds only the tokens the cache has not seen (here the last prompt token), so the K
        continuations share one prompt computation; positions follow the attention mask as in `generate`.
        """
        cache = DynamicCache(config=self.model.config)
        prefix_mask = attention_mask[:, :-1]
        position_ids = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        self.model(
            input_ids=input_ids[:, :-1],
            attention_mask=prefix_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_repeat_interleave(k)
        return self.model.generate(
            input_ids=input_ids.repeat_interleave(k, dim=0),
            attention_mask=attention_mask.repeat_interleave(k, dim=0),
            cache=cache,  # past_key_values is deprecated in forward and generate (transformers 5.x)
            **kwargs,
        )


class VLLMSamplingEngine:
    """vLLM backend, same interface; vLLM shares a prompt's KV blocks across its K samples (`n=K`).

    `model` is a vllm.LLM or a checkpoint path/name (then an LLM is built with `llm_kwargs`).
    """

    def __init__(self, model, tokenizer, **llm_kwargs):
        try:
            # vllm is an optional extra (llama2-align[vllm]), needed only by this backend.
            import vllm  # noqa: PLC0415
        except ImportError:
            raise RecipeError(
                "sampling_backend 'vllm' needs the vllm package: pip install 'llama2-align[vllm]'"
            ) from None
        self._vllm = vllm
        if isinstance(model, str):
            model = vllm.LLM(model=resolve_model_path(model), **llm_kwargs)
        self.llm = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Sample]:
        vllm_params = self._vllm.SamplingParams(
            n=params.num_samples,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
        )
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, vllm_params, use_tqdm=False)
        stop = set(self.stop_ids)
        samples = []
        for prompt_index, output in enumerate(outputs):
            for sample_index, completion in enumerate(output.outputs):
                samples.append(
                    make_sample(
                        self.tokenizer,
                        stop,
                        prompt_index,
                        sample_index,
                        prompt_ids[prompt_index],
                        list(completion.token_ids),
                    )
                )
        return samples


def make_sampling_engine(backend: str, model, tokenizer, **kwargs) -> SamplingEngine:
    """'hf' (model: a loaded causal LM) or 'vllm' (model: a vllm.LLM or a checkpoint name)."""
    if backend == "hf":
        return HFSamplingEngine(model, tokenizer, **kwargs)
    if backend == "vllm":
        return VLLMSamplingEngine(model, tokenizer, **kwargs)
    raise RecipeError(f"unknown sampling_backend '{backend}' (use one of {', '.join(SAMPLING_BACKENDS)})")
