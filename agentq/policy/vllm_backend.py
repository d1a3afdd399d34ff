"""The vLLM backend for GPU clusters: same interface as `hf`, much higher throughput for K samples.

vllm is an optional extra (CUDA only), imported when this backend is chosen and never otherwise.
"""

from __future__ import annotations

from typing import Any

from agentq.config import ModelSpec
from agentq.policy.base import BatchPolicy, PolicyError, Request, Sample, request_samples
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


class VllmPolicy(BatchPolicy):
    def __init__(self, spec: ModelSpec) -> None:
        self.vllm = import_vllm()
        source = loadable_dir(resolve_model(spec))
        dtype = "auto" if spec.dtype == "auto" else spec.dtype
        options: dict[str, Any] = {"quantization": "bitsandbytes"} if spec.quantization == "nf4" else {}
        self.llm = self.vllm.LLM(model=source.location, dtype=dtype, seed=0, **options)
        self.tokenizer = self.llm.get_tokenizer()

    def generate_batch(self, requests: list[Request]) -> list[list[Sample]]:
        """One `LLM.generate` over every request, each with its own SamplingParams (n, temperature, seed)."""
        if not requests:
            return []
        texts = [
            self.tokenizer.apply_chat_template(r.prompt.messages, tokenize=False, add_generation_prompt=True)
            + r.prompt.answer_prefix
            for r in requests
        ]
        params = [
            self.vllm.SamplingParams(
                n=1 if r.temperature <= 0 else r.n,
                temperature=max(r.temperature, 0.0),
                max_tokens=r.max_new_tokens,
                seed=r.seed,
                logprobs=0,  # only the sampled token's log-prob, which fills cumulative_logprob
            )
            for r in requests
        ]
        results = self.llm.generate(texts, params, use_tqdm=False)
        out = []
        for request, result in zip(requests, results, strict=True):
            samples = [
                Sample(text=c.text, logprob=c.cumulative_logprob, tokens=len(c.token_ids)) for c in result.outputs
            ]
            out.append(request_samples(request, samples, len(result.prompt_token_ids or [])))
        return out
