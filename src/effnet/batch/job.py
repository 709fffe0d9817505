"""One batch job: inputs -> identity -> pending shards -> an engine's rows -> shard files -> summary."""
from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..arch import DEFAULT_MODEL
from ..errors import EffnetError, MissingEngineError, OutputError
from ..resolved import ResolvedModel, Weights, resolve
from .inputs import Inputs, collect_inputs, is_uri
from .store import Row, Store, require_pyarrow, shard_bounds, shard_count

ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 1000


@dataclass
class Summary:
    """What a run did: `classified` and `failed` now, `skipped` inputs already done by an earlier run
    (`skipped_failed` of them had failed). `nodes`: rows this run classified per node (Ray node id or host)."""

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


def job_identity(inputs: Inputs, resolved: ResolvedModel, engine: str, backend: str, precision: str,
                 top: int, shard_size: int) -> dict:
    """What makes two runs the same job (and so allowed to share an output folder)."""
    from .. import __version__

    return {"format": 1, "model": resolved.name, "weights_sha256": resolved.weights_sha256, "engine": engine,
            "backend": backend, "precision": precision, "top": top, "effnet_version": __version__,
            "inputs": len(inputs.uris), "inputs_sha256": inputs.digest(), "shard_size": shard_size}


def run_batch(inputs: list[str | os.PathLike], output: str | os.PathLike, *, model: str = DEFAULT_MODEL,
              weights: Weights = "imagenet", backend: str = "auto", precision: str | None = None, top: int = 5,
              batch_size: int = 8, engine: str = "local", shard_size: int = DEFAULT_SHARD_SIZE,
              ray_address: str | None = None, workers: int | None = None, cpus_per_worker: int | None = None,
              restart: bool = False, log: Callable[[str], None] = lambda _: None,
              on_rows: Callable[[int], None] = lambda _: None, on_start: Callable[[int], None] = lambda _: None
              ) -> Summary:
    """Classify every input once into a Parquet dataset under `output`; resumable, never duplicating.

    `on_start(n)` hears how many inputs this run will classify, `on_rows(k)` each time k more are written
    (a progress bar); `log` hears one line per notable event (nothing to do, skipped folder entries)."""
    from ..backends import default_precision, resolve_kind

    require_pyarrow()
    if engine not in ENGINES:
        raise EffnetError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if engine == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError as exc:
            raise MissingEngineError("--engine ray needs Ray Data; install it with: pip install 'effnet[ray]'") from exc
    if shard_size < 1 or top < 1 or batch_size < 1:
        raise EffnetError("shard size, top and batch size must be >= 1")
    if is_uri(os.fspath(output)):  # else a folder named "s3:" would appear here, and vanish with the machine
        raise OutputError(f"--output {os.fspath(output)}: the output must be a folder on a file system this "
                          "process writes (shards are renamed into place and the folder is locked); mount the "
                          "store or a shared volume there, or copy the folder to the store after the job")
    listed = collect_inputs(list(inputs))
    for entry in listed.skipped:
        log(f"skipped {entry}")
    if not listed.uris:
        raise EffnetError(f"no inputs found in {' '.join(map(os.fspath, inputs))}")
    kind = resolve_kind(backend, precision)  # a missing engine fails before any download
    precision = precision or default_precision(kind)
    resolved = resolve(model, weights)
    identity = job_identity(listed, resolved, engine, kind, precision, top, shard_size)

    total = len(listed.uris)
    count = shard_count(total, shard_size)
    summary = Summary(os.fspath(output), total)
    with Store(output).open() as store:
        store.prepare(identity, restart)
        done = store.done()
        for path in done.values():
            rows, failed = store.shard_counts(path)
            summary.skipped += rows
            summary.skipped_failed += failed
        pending = [k for k in range(count) if k not in done]
        if not pending:
            summary.nothing_to_do = True
            log(f"nothing to do: all {total} inputs in {output} are already done")
            return summary
        on_start(sum(shard_bounds(k, shard_size, total)[1] - shard_bounds(k, shard_size, total)[0] for k in pending))
        items = [(p, listed.uris[p]) for k in pending for p in range(*shard_bounds(k, shard_size, total))]
        if engine == "local":
            rows = _local_rows(resolved, kind, precision, batch_size, top, items, log)
        else:
            from .ray_engine import ray_rows

            rows = ray_rows(resolved, weights, kind, precision, batch_size, top, items, address=ray_address,
                            workers=workers, cpus_per_worker=cpus_per_worker, log=log)
        _write_shards(store, rows, listed, shard_size, count, summary, on_rows)
    return summary


def _local_rows(resolved: ResolvedModel, kind: str, precision: str, batch_size: int, top: int,
                items: list[tuple[int, str]], log: Callable[[str], None]) -> Iterator[tuple[Row, str]]:
    from ..classifier import Classifier
    from .sources import classify_positions

    classifier = Classifier(resolved, backend=kind, precision=precision, batch_size=batch_size, log=log)
    described = classifier.describe()
    if (described["backend"], described["precision"]) != (kind, precision):  # the identity must say what ran
        raise EffnetError(f"the engine runs {described['backend']} {described['precision']}, "
                          f"the job was recorded as {kind} {precision}")
    host = socket.gethostname()
    for row in classify_positions(classifier, items, top):
        yield row, host


def _write_shards(store: Store, rows: Iterator[tuple[Row, str]], listed: Inputs, shard_size: int, count: int,
                  summary: Summary, on_rows: Callable[[int], None]) -> None:
    """Collect rows per shard (engines may answer out of order) and write each shard once it is whole."""
    buffers: dict[int, dict[int, Row]] = {}
    nodes: dict[int, Counter] = {}
    written: set[int] = set()
    total = len(listed.uris)
    for row, node in rows:
        k = row.position // shard_size
        if k in written or row.position in buffers.get(k, ()):  # a retried batch: the first answer stands
            continue
        buffers.setdefault(k, {})[row.position] = row
        nodes.setdefault(k, Counter())[node] += 1
        start, end = shard_bounds(k, shard_size, total)
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
            on_rows(len(shard))
    if buffers:  # an engine that stopped early: never write a partial shard
        missing = sum(shard_bounds(k, shard_size, total)[1] - shard_bounds(k, shard_size, total)[0] - len(b)
                      for k, b in buffers.items())
        raise EffnetError(f"the engine stopped with {missing} inputs unanswered; run the same command again "
                          "to finish (finished shards are kept)")
