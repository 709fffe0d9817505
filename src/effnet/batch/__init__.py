"""Batch jobs: inputs -> fixed shards -> a runner (this process, or Ray Data actors) -> Parquet, exactly once.

`run_batch` is `effnet batch` as a function: plan.py plans the job, job.py runs it, store.py writes the
output folder exactly once (see its docstring for how).
"""
from .inputs import InputError, Inputs, collect_inputs
from .job import Summary, run_batch
from .plan import DEFAULT_SHARD_SIZE, RUNNERS, JobPlan, plan_job
from .store import IDENTITY_FILE, IdentityMismatch

__all__ = ["DEFAULT_SHARD_SIZE", "IDENTITY_FILE", "RUNNERS", "IdentityMismatch", "InputError", "Inputs", "JobPlan",
           "Summary", "collect_inputs", "plan_job", "run_batch"]
