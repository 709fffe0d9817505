"""Running a batch job: plan (plan.py) -> open the output folder -> pending shards -> a runner's rows (the
local stream, or Ray Data actors) -> shard files written exactly once -> a summary."""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..arch import DEFAULT_MODEL
from ..engines import AUTO, EngineChoice, EngineOptions, graph_batch_sizes, resolve_engine
from ..errors import EffnetError
from ..progress import NoProgress, Progress
from ..resolved import UNSET, ResolvedModel, Weights, resolve
from .plan import DEFAULT_SHARD_SIZE, JobPlan, check_request, list_inputs, plan_job
from .store import Row, Store, require_pyarrow

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """What a run did: `classified` and `failed` now (an input that could not be read, decoded or even listed
    has failed), `skipped` inputs already done by an earlier run (`skipped_failed` of them had failed).
    `nodes`: rows this run classified per node (Ray node id or host)."""

    output: str
    total: int
    classified: int = 0
    failed: int = 0
    skipped: int = 0
    skipped_failed: int = 0
    shards_written: int = 0
    nothing_to_do: bool = False
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        """0 when every input of the job has an answer, 1 when any failed (now or in an earlier run)."""
        return 1 if self.failed or self.skipped_failed else 0


def run_batch(inputs: list[str | os.PathLike], output: str | os.PathLike, *,
              model: str | ResolvedModel = DEFAULT_MODEL, weights: Weights = UNSET,
              engine: EngineChoice | None = None, backend: str = AUTO, precision: str | None = None,
              device: str = AUTO, top: int = 5, batch_size: int | None = None, runner: str = "local",
              decode: str = "exact", shard_size: int = DEFAULT_SHARD_SIZE, ray_address: str | None = None, workers: int | None = None,
              cpus_per_worker: int | None = None, restart: bool = False,
              progress: Progress | None = None) -> Summary:
    """Classify every input once into a Parquet dataset under `output`; resumable, never duplicating.

    `engine` (or `backend`, `precision`, `device`, resolved here) says what computes; `runner` where: "local"
    (this process) or "ray" (Ray Data actors, on the cluster at `ray_address`; with a CUDA device each actor
    takes one GPU); `decode`: "exact" (the checker's Pillow pipeline) or "gpu". `progress` hears how many
    inputs this run will classify and each shard written."""
    require_pyarrow()
    batch_size = batch_size or (engine.batch_size if engine else None)
    check_request(output, runner, top, batch_size or 1, shard_size)
    listed = list_inputs(inputs)
    for error in listed.unlisted.values():  # before the model loads: a person sees at once what will fail
        log.warning("%s (its row carries the error)", error)
    if engine is None:  # a missing engine or GPU fails before any download; Ray's nodes check their own GPUs
        engine = resolve_engine(backend, precision, device=device, local=runner == "local",
                                options=EngineOptions(batch_sizes=graph_batch_sizes(batch_size)))
    batch_size = batch_size or engine.batch_size
    resolved = resolve(model, weights)
    plan = plan_job(listed, resolved, engine, runner, top, shard_size, decode)
    summary = Summary(os.fspath(output), plan.total)
    with Store(output).open() as store:
        store.prepare(plan.identity, restart)
        done = store.done()
        for path in done.values():
            rows, failed = store.shard_counts(path)
            summary.skipped += rows
            summary.skipped_failed += failed
        pending = [k for k in range(plan.shards) if k not in done]
        if not pending:
            summary.nothing_to_do = True
            log.info("nothing to do: all %d inputs in %s are already done", plan.total, output)
            return summary
        items, unlisted = plan.items(pending), plan.unlisted_rows(pending)
        progress = progress or NoProgress()
        progress.start(len(items) + len(unlisted))
        try:
            rows: Iterator[tuple[Row, str | None]] = iter([])
            if items and runner == "local":
                rows = local_rows(resolved, engine, batch_size, top, items, decode)
            elif items:
                from .ray_runner import ray_rows

                rows = ray_rows(resolved, engine, batch_size, top, items, decode, address=ray_address,
                                workers=workers, cpus_per_worker=cpus_per_worker)
            _write_shards(store, itertools.chain(((row, None) for row in unlisted), rows), plan, summary, progress)
        finally:
            progress.close()
    return summary


def local_rows(resolved: ResolvedModel, engine: EngineChoice, batch_size: int, top: int,
               items: list[tuple[int, str]], decode: str = "exact") -> Iterator[tuple[Row, str]]:
    """This process's answers: the Classifier's stream (decode threads overlapping the engine)."""
    from ..classifier import Classifier
    from .sources import classify_positions

    classifier = Classifier(resolved, backend=engine, batch_size=batch_size, decode=decode)
    host = socket.gethostname()
    for row in classify_positions(classifier, items, top):
        yield row, host


def _write_shards(store: Store, rows: Iterator[tuple[Row, str | None]], plan: JobPlan, summary: Summary,
                  progress: Progress) -> None:
    """Collect rows per shard (runners may answer out of order) and write each shard once it is whole. A row's
    node is the Ray node or host that classified it; None for an input that could not be listed."""
    buffers: dict[int, dict[int, Row]] = {}
    nodes: dict[int, Counter] = {}
    written: set[int] = set()
    listed, shard_size, count = plan.inputs, plan.shard_size, plan.shards
    for row, node in rows:
        k = row.position // shard_size
        if k in written or row.position in buffers.get(k, ()):  # a retried batch: the first answer stands
            continue
        buffers.setdefault(k, {})[row.position] = row
        nodes.setdefault(k, Counter())
        if node is not None:
            nodes[k][node] += 1
        start, end = plan.bounds(k)
        if len(buffers[k]) == end - start:
            shard = list(buffers.pop(k).values())
            per_node = nodes.pop(k)
            store.write_shard(k, count, shard, listed.has_ids, listed.ids[start:end],
                              extra={"effnet.nodes": json.dumps(dict(per_node))})
            written.add(k)
            failed = sum(r.error is not None for r in shard)
            summary.failed += failed
            summary.classified += len(shard) - failed
            summary.shards_written += 1
            for n, c in per_node.items():
                summary.nodes[n] = summary.nodes.get(n, 0) + c
            progress.advance(len(shard))
    if buffers:  # an engine that stopped early: never write a partial shard
        missing = sum(plan.bounds(k)[1] - plan.bounds(k)[0] - len(b)
                      for k, b in buffers.items())
        raise EffnetError(f"the runner stopped with {missing} inputs unanswered; run the same job again "
                          "to finish (finished shards are kept)")
