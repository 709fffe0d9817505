"""Planning a batch job, before anything runs: the input list, the job's identity, and its fixed shards."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..engines import EngineChoice
from ..errors import EffnetError, MissingEngineError, OutputError
from ..resolved import RANDOM_SEED, ResolvedModel
from .inputs import Inputs, collect_inputs, is_uri
from .store import Row, foreign_entries, shard_bounds, shard_count

RUNNERS = ("local", "ray")
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class JobPlan:
    """One job: its inputs in order, what makes it this job (`identity`), and its shards of `shard_size`."""

    inputs: Inputs
    identity: dict
    shard_size: int

    @property
    def total(self) -> int:
        return len(self.inputs.uris)

    @property
    def shards(self) -> int:
        return shard_count(self.total, self.shard_size)

    def bounds(self, shard: int) -> tuple[int, int]:
        return shard_bounds(shard, self.shard_size, self.total)

    def items(self, shards: list[int]) -> list[tuple[int, str]]:
        """(position, uri) of every input of `shards` a runner classifies, in order."""
        return [(p, self.inputs.uris[p]) for k in shards for p in range(*self.bounds(k))
                if p not in self.inputs.unlisted]

    def unlisted_rows(self, shards: list[int]) -> list[Row]:
        """The error rows of the inputs of `shards` that could not even be listed (no runner sees them)."""
        return [Row(p, self.inputs.uris[p], error=self.inputs.unlisted[p]) for k in shards
                for p in range(*self.bounds(k)) if p in self.inputs.unlisted]


def check_request(output: str | os.PathLike, runner: str, top: int, batch_size: int, shard_size: int) -> None:
    """Mistakes refused before inputs are listed or weights fetched."""
    if runner not in RUNNERS:
        raise EffnetError(f"unknown runner={runner}; choose one of: {', '.join(RUNNERS)}", params=("runner",))
    if runner == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError as exc:
            raise MissingEngineError("runner=ray needs Ray Data; install it with: pip install 'effnet[ray]'",
                                     params=("runner",)) from exc
    if shard_size < 1 or top < 1 or batch_size < 1:
        raise EffnetError("shard_size=, top= and batch_size= must be >= 1", params=("shard_size", "top", "batch_size"))
    if is_uri(os.fspath(output)):  # else a folder named "s3:" would appear here, and vanish with the machine
        raise OutputError(f"output={os.fspath(output)}: the output must be a folder on a file system this "
                          "process writes (shards are renamed into place and the folder is locked); mount the "
                          "store or a shared volume there, or copy the folder to the store after the job",
                          params=("output",))
    if foreign := foreign_entries(output):  # an input folder, say: the dataset could then not be read
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"output={os.fspath(output)} holds files that are not this job's shards ({shown}); a "
                          "reader of the dataset takes every file in the folder: give a new or empty folder as "
                          "output=DIR", params=("output",))


def list_inputs(inputs: list[str | os.PathLike]) -> Inputs:
    """The job's input list; EffnetError when it is empty."""
    listed = collect_inputs(list(inputs))
    if not listed.uris:
        raise EffnetError(f"no inputs found in {' '.join(map(os.fspath, inputs))}")
    return listed


def plan_job(listed: Inputs, resolved: ResolvedModel, engine: EngineChoice, runner: str, top: int,
             shard_size: int, decode: str = "exact") -> JobPlan:
    """The job these inputs, this model and this engine make: what its output folder must record."""
    from .. import __version__

    identity = {"format": 1, "model": resolved.name, "weights_sha256": resolved.weights_sha256,
                "runner": runner, "backend": engine.backend, "precision": engine.precision,
                "device": engine.device.type, "decode": decode, "top": top, "effnet_version": __version__,
                "inputs": len(listed.uris), "inputs_sha256": listed.digest(), "shard_size": shard_size}
    if resolved.random_weights:  # the same seeded network on every run and every Ray actor
        identity["weights_seed"] = RANDOM_SEED
    return JobPlan(listed, identity, shard_size)
