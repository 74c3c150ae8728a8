"""Tensor/expert-parallel execution over N processes (issue 7): `executor.TPExecutor` in the engine
process (rank 0) drives N-1 `worker.worker_main` processes; see executor.py for the protocol."""
