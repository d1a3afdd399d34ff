"""The vLLM backend for GPU clusters: same interface as `hf`, much higher throughput for K samples.

vllm is an optional extra (CUDA only), imported when this backend is chosen and never otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentq.config import ModelSpec
from agentq.policy.base import PolicyError, Prompt, Sample
from agentq.policy.models import loadable_dir, resolve_model


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as err:
        raise PolicyError(
            f"model.backend vllm: the vllm package is not installed ({err}); install the extra with "
            "pip install 'agentq[vllm]' on a CUDA machine, or use model.backend: hf"
        ) from None
    return vllm


class VllmPolicy:
    def __init__(self, spec: ModelSpec) -> None:
        self.vllm = import_vllm()
        source = loadable_dir(resolve_model(spec))
        dtype = "auto" if spec.dtype == "auto" else spec.dtype
        options: dict[str, Any] = {"quantization": "bitsandbytes"} if spec.quantization == "nf4" else {}
        self.llm = self.vllm.LLM(model=source.location, dtype=dtype, seed=0, **options)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[Prompt], *, n: int, temperature: float, max_new_tokens: int, seed: int
    ) -> list[list[Sample]]:
        if not prompts:
            return []
        texts = [
            self.tokenizer.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True) + p.answer_prefix
            for p in prompts
        ]
        greedy = temperature <= 0
        params = self.vllm.SamplingParams(
            n=1 if greedy else n,
            temperature=max(temperature, 0.0),
            max_tokens=max_new_tokens,
            seed=seed,
            logprobs=0,  # only the sampled token's log-prob, which fills cumulative_logprob
        )
        results = self.llm.generate(texts, params, use_tqdm=False)
        out = []
        for result in results:
            samples = [
                Sample(text=c.text, logprob=c.cumulative_logprob, tokens=len(c.token_ids)) for c in result.outputs
            ]
            out.append([replace(samples[0]) for _ in range(n)] if greedy else samples)
        return out
