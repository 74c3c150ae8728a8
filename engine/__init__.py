"""Engine: requests, scheduler, model runner, sampler, detokenizer, offline and async APIs."""

from .outputs import CompletionOutput, OutputKind, RequestOutput
from .sampling_params import SamplingParams


def __getattr__(name):  # lazy: importing engine must not load torch-heavy modules for SamplingParams users
    if name == "LLM":
        from .llm import LLM

        return LLM
    if name == "AsyncLLM":
        from .async_engine import AsyncLLM

        return AsyncLLM
    raise AttributeError(name)


__all__ = ["LLM", "AsyncLLM", "SamplingParams", "RequestOutput", "CompletionOutput", "OutputKind"]
