"""The executor of a one-process engine: runs a step's forward here (one GPU, or the CPU).

The model runner builds a step's batch (engine/model_runner.py) and always hands it to an executor:
this one, or the tensor-parallel `engine.distributed.executor.TPExecutor`, which first sends the same
host description to its worker processes. Both have the same three members: `multi_process`,
`guard()` and `forward(batch, state, host, ops)`. The pure-decode CUDA-graph path replays its graph
in the runner (engine/cuda_graph.py) and is only built for this executor.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from models.model import DeepseekV4
from models.state import ForwardBatch


class LocalExecutor:
    """One process: the forward runs on this process's model and KV state."""

    # False: CUDA graphs and async scheduling (inputs still on the device) may be used
    multi_process = False

    def __init__(self, model: DeepseekV4) -> None:
        self.model = model  # the whole model (tensor parallel: TPExecutor holds rank 0's shard)

    def guard(self) -> contextlib.AbstractContextManager:
        """Nothing to watch: a failure in the forward is the caller's exception as it is."""
        return contextlib.nullcontext()

    def forward(self, batch: ForwardBatch, state: Any, host: Any, ops: Any) -> torch.Tensor:
        """Hidden states of `batch` (`host`: its host description, `ops`: this step's prefix-cache
        snapshot restores / saves; both only matter to executors with other processes)."""
        return self.model(batch, state)
