"""Batch jobs: inputs -> fixed shards -> the local stream or Ray Data actors -> Parquet, exactly once.

`run_batch` is `effnet batch` as a function. See store.py for the exactly-once scheme.
"""
from .inputs import InputError, Inputs, collect_inputs
from .job import DEFAULT_SHARD_SIZE, ENGINES, Summary, run_batch
from .store import IDENTITY_FILE, IdentityMismatch

__all__ = ["DEFAULT_SHARD_SIZE", "ENGINES", "IDENTITY_FILE", "IdentityMismatch", "InputError", "Inputs", "Summary",
           "collect_inputs", "run_batch"]
