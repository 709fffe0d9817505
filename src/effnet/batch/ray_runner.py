"""The Ray runner: Ray Data feeds (position, uri) rows to a pool of actors; each actor loads the model once
and reads and decodes its images with effnet's own code (the card's exact preprocessing, one bad file =
one error row, no decoded images in the object store). Only the small answers come back to the driver,
which writes the shards exactly as the local runner does. With a CUDA device each actor asks Ray for one
GPU (one model per GPU) and checks it where it runs.

A node that dies mid-job: Ray Data's actors restart (max_restarts=-1) wherever a CPU is or becomes free (a
replacement node, or one a finished actor releases) and retry their unfinished blocks (max_task_retries=-1);
an answer that arrives twice is dropped by its position (job._write_shards), so shards stay exactly once.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..engines import EngineChoice, on_this_machine
from ..resolved import ResolvedModel
from .store import Row

log = logging.getLogger(__name__)


def actor_engine(engine: EngineChoice, cpus: int) -> EngineChoice:
    """The engine of an actor that holds `cpus` CPUs, checked on the actor's machine: its threads are those
    CPUs, not the node's. OpenVINO and ONNX Runtime would otherwise each start a thread per core of the node,
    so k actors on one node would run k times too many threads (Ray's OMP_NUM_THREADS, set to the actor's CPUs,
    reaches only PyTorch). OpenVINO's threads are also left unpinned: each actor's process would pin its
    streams to the node's first cores, so two 1-CPU actors on a 2-core node shared core 0 and left core 1
    idle (0.45x measured)."""
    return on_this_machine(replace(engine, options=replace(engine.options, threads=cpus, pin_threads=False)))


class Predictor:
    """One Ray Data actor: the model, loaded once, answering batches of (position, uri) rows."""

    def __init__(self, model: str, weights: str | Path, weights_sha256: str | None, engine: EngineChoice,
                 batch_size: int, top: int, decode: str, decode_workers: int) -> None:
        import ray

        from ..classifier import Classifier
        from ..errors import WeightsError
        from ..resolved import resolve

        resolved = resolve(model, weights, progress=False)
        node = ray.get_runtime_context().get_node_id()
        if resolved.weights_sha256 != weights_sha256:  # a node with another file must not answer for this job
            raise WeightsError(f"weights on node {node} have sha256 {resolved.weights_sha256}, the job's are "
                               f"{weights_sha256}")
        self.classifier = Classifier(resolved, backend=actor_engine(engine, decode_workers), batch_size=batch_size,
                                     decode=decode, decode_workers=decode_workers)
        self.top = top
        self.node = node

    def __call__(self, batch):
        import pyarrow as pa

        from .sources import classify_positions

        items = zip(batch.column("position").to_pylist(), batch.column("uri").to_pylist())
        rows = list(classify_positions(self.classifier, items, self.top))
        return pa.table({
            "position": pa.array([r.position for r in rows], pa.int64()),
            "error": pa.array([r.error for r in rows], pa.string()),
            "indices": pa.array([r.indices for r in rows], pa.list_(pa.int32())),
            "labels": pa.array([r.labels for r in rows], pa.list_(pa.string())),
            "probabilities": pa.array([r.probabilities for r in rows], pa.list_(pa.float32())),
            "node": pa.array([self.node] * len(rows), pa.string()),
        })


def ray_rows(resolved: ResolvedModel, engine: EngineChoice, batch_size: int, top: int, items: list[tuple[int, str]],
             decode: str = "exact", *, address: str | None = None, workers: int | None = None, cpus_per_worker: int | None = None
             ) -> Iterator[tuple[Row, str]]:
    """Rows for `items` from an actor pool on the cluster at `address` (or RAY_ADDRESS; else a local Ray
    started for this job). Each actor takes `cpus_per_worker` CPUs (default 1), which also sets its engine's
    threads and its decode threads, and one GPU where the engine's device is CUDA; `workers` actors (default:
    as many as the cluster's CPUs, or GPUs, allow)."""
    import pyarrow as pa
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=True,
                 configure_logging=True)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.verbose_stats_logs = False
        ctx.wait_for_min_actors_s = 600  # the whole pool up before work starts: no node left idle
        cpus = cpus_per_worker or 1
        gpus = 1 if engine.device.is_cuda else 0  # one model per GPU
        resources = ray.cluster_resources()
        have_cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        if workers is None:
            workers = max(1, int(have_gpus) if gpus else int(have_cpus // cpus))
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        log.info("ray: %d workers x %d CPUs%s on %d nodes", workers, cpus, " + 1 GPU" if gpus else "", nodes)
        if workers * cpus > have_cpus or workers * gpus > have_gpus:  # an autoscaler adds nodes; a fixed
            # cluster (one that lost a node) never will
            log.warning("ray: the pool needs %d CPUs%s, the cluster has %g CPUs and %g GPUs now; waiting up to "
                        "%d min for nodes to join (fewer workers start at once)", workers * cpus,
                        f" and {workers * gpus} GPUs" if gpus else "", have_cpus, have_gpus,
                        ctx.wait_for_min_actors_s // 60)
        uri_of = dict(items)
        # Blocks made here (a repartition would need CPUs that the actors hold): about 8 per actor, so that
        # every actor gets work, and at most 64 engine batches each. A block is one Ray task whose answers
        # come back when it ends: unbounded (a million inputs on 64 actors: 1954 images, 7 min of B7 on 2
        # CPUs) the driver would hear of them in bursts, a lost node or driver would take that much work
        # in flight with it, and the last blocks would leave other actors idle for as long.
        step = max(batch_size, min(-(-len(items) // (8 * workers)), 64 * batch_size))
        blocks = [pa.table({"position": pa.array([p for p, _ in part], pa.int64()),
                            "uri": pa.array([u for _, u in part], pa.string())})
                  for part in (items[i:i + step] for i in range(0, len(items), step))]
        ds = ray.data.from_arrow(blocks)
        ds = ds.map_batches(
            # A call of several engine batches: inside it, decoding the next batch overlaps inferring this one.
            Predictor, batch_size=4 * batch_size, batch_format="pyarrow", num_cpus=cpus, num_gpus=gpus,
            compute=ray.data.ActorPoolStrategy(size=workers),
            # The actors resolve the weights themselves ("imagenet" from their own cache, a path on a shared
            # file system) and check the sha256, so nothing large travels through the object store.
            fn_constructor_kwargs=dict(model=resolved.name, weights=resolved.weights_source,
                                       weights_sha256=resolved.weights_sha256, engine=engine,
                                       batch_size=batch_size, top=top, decode=decode, decode_workers=cpus))
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            cols = {name: batch.column(name).to_pylist() for name in batch.column_names}
            for pos, err, idx, lab, prob, node in zip(cols["position"], cols["error"], cols["indices"],
                                                      cols["labels"], cols["probabilities"], cols["node"]):
                yield Row(pos, uri_of[pos], error=err, indices=idx, labels=lab, probabilities=prob), node
    finally:
        if started:
            ray.shutdown()
