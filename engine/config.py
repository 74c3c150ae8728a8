"""Engine configuration: what a user sets (`EngineArgs`) and the frozen, resolved result."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.kv_format import from_cli as kv_format_from_cli

from .spec_decode_config import SpeculativeConfig

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@dataclass
class EngineArgs:
    """User-facing knobs (CLI flags and `LLM(...)` keyword arguments map 1:1 onto these)."""

    model: str | None = None  # checkpoint dir; None = the embedded demo model
    device: str = "auto"  # "cpu" | "cuda" | "auto" (cuda when available)
    dtype: str | torch.dtype = "auto"  # "auto" = bfloat16 on cuda, float32 on cpu
    max_num_seqs: int = 64  # most sequences in one step (also the number of state slots)
    # token budget per step (decode tokens + prefill chunks); None: by device and usage
    # (resolve_max_num_batched_tokens, vLLM's defaults)
    max_num_batched_tokens: int | None = None
    usage: str = "offline"  # "offline" (LLM, benchmarks) or "server" (`v4serve serve`): picks the default budget
    max_model_len: int | None = None  # None = min(model max positions, what the cache holds)
    num_kv_blocks: int | None = None  # explicit cache size in blocks (overrides the memory budget)
    kv_cache_memory: int | None = None  # explicit byte budget for the KV cache (CPU default 256 MiB)
    gpu_memory_utilization: float = 0.9  # fraction of free GPU memory for the KV cache after weights
    kv_cache_dtype: str = "auto"  # a kernels/kv_format.py CLI_CHOICES value ("auto": dense in the activation dtype)
    block_size: int | None = None  # tokens per cache block; None = smallest multiple of every ratio >= 64
    max_queued_requests: int | None = None  # waiting sequences (n per request) beyond this: HTTP 429
    # vLLM's --scheduler-delay-factor: while sequences run, a new prompt waits until the oldest waiting one has
    # waited delay_factor x the last prompt step's duration, so arrivals close in time share one prefill step
    # (each prompt step runs the eager forward: engine/cuda_graph.py); 0 = admit at the next step
    scheduler_delay_factor: float = 0.0
    seed: int = 0
    tensor_parallel_size: int = 1
    served_model_name: str | None = None
    enable_prefix_caching: bool = True  # reuse the cached KV of shared prompt prefixes (kvcache/prefix_cache.py)
    prefix_snapshot_interval: int | None = None  # tokens between state snapshots; None = auto (kvcache/sizing.py)
    # overlapped loop (engine/async_step.py): schedule + launch step N+1 before processing step N's
    # tokens; None = on for CUDA with tensor_parallel_size 1, off on CPU (nothing to overlap there)
    async_scheduling: bool | None = None
    enforce_eager: bool = False  # True: no CUDA graphs (decode steps run the eager forward, as on CPU)
    # start-up runs prompts of ~2x-spaced lengths up to the token budget through the engine, compiling the eager
    # steps' kernel variants before serving (engine/eager_warmup.py); None = on with CUDA, off on CPU
    eager_warmup: bool | None = None
    # speculative decoding (engine/spec_decode.py), vLLM's form: {"method": "mtp", "num_speculative_tokens": k},
    # k = 1..4 (a dict or its JSON text); None = off. On: MTP weights load, the loop runs synchronously
    # and decode steps run eagerly (no CUDA graphs)
    speculative_config: dict | str | None = None
    # speculative_config parsed once per value, when it is set (at construction or assigned later; never
    # stale): engine/spec_decode_config.py's frozen SpeculativeConfig; None = off
    spec_config: SpeculativeConfig | None = field(init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "speculative_config":  # a ValueError names the field
            super().__setattr__("spec_config", SpeculativeConfig.parse(value))

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but no CUDA GPU is available")
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"unsupported device {self.device!r} (use 'cpu', 'cuda' or 'auto')")
        return dev

    def resolve_dtype(self, device: torch.device) -> torch.dtype:
        if isinstance(self.dtype, torch.dtype):
            if self.dtype not in _DTYPES.values():
                raise ValueError(f"unsupported dtype {self.dtype}")
            return self.dtype
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        if self.dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r} (float32, bfloat16, float16 or auto)")
        return _DTYPES[self.dtype]

    def resolve_max_num_batched_tokens(self, device: torch.device) -> int:
        """The step's token budget: the value set, else vLLM's defaults -- on a CUDA GPU with >= 70 GiB that is
        not an A100, 16,384 offline and 8,192 for the server (a 1M-token prompt on one H200: 30,954 tok/s at
        16,384, 28,741 at 8,192; docs/benchmarks.md, session 9), on smaller GPUs 8,192 / 2,048, on CPU 2,048."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        if device.type != "cuda":
            return 2048
        props = torch.cuda.get_device_properties(device)
        large = props.total_memory >= 70 * 2**30 and "a100" not in props.name.lower()
        return {(True, "offline"): 16384, (True, "server"): 8192,
                (False, "offline"): 8192, (False, "server"): 2048}[(large, self.usage)]

    def resolve_async_scheduling(self, device: torch.device) -> bool:
        if self.async_scheduling is None:
            return device.type == "cuda" and self.tensor_parallel_size == 1 and self.spec_config is None
        return bool(self.async_scheduling)

    @property
    def kv_format(self) -> str:
        """The engine kv_format name of kv_cache_dtype (kernels/kv_format.py: "bf16" = dense entries)."""
        return kv_format_from_cli(self.kv_cache_dtype).name

    def resolve_eager_warmup(self, device: torch.device) -> bool:
        """eager_warmup, or its default for the device (on with CUDA: nothing compiles on the CPU)."""
        return self.eager_warmup if self.eager_warmup is not None else device.type == "cuda"

    def validate(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.usage not in ("offline", "server"):
            raise ValueError(f"usage must be 'offline' or 'server', got {self.usage!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("max_model_len must be >= 1")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError("num_kv_blocks must be >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError("max_queued_requests must be >= 0")
        if not self.scheduler_delay_factor >= 0.0:  # NaN fails too
            raise ValueError(f"scheduler_delay_factor must be >= 0, got {self.scheduler_delay_factor}")
        kv_format_from_cli(self.kv_cache_dtype)  # raises on an unknown name
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be >= 1")
        spec = self.spec_config
        if spec is not None and self.async_scheduling:
            raise ValueError("speculative decoding runs the synchronous loop: async_scheduling must be off")
        if self.async_scheduling and self.tensor_parallel_size > 1:
            raise ValueError("async_scheduling needs tensor_parallel_size 1 (the TP workers get each step's "
                             "token ids from the host)")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int  # running sequences at most (== number of state slots)
    max_num_batched_tokens: int  # tokens per step (decode + prefill chunks)
    max_model_len: int  # prompt + generated tokens of one sequence at most
    max_queued_requests: int | None = None  # waiting sequences beyond this are refused
    delay_factor: float = 0.0  # EngineArgs.scheduler_delay_factor (Scheduler._passed_delay)
