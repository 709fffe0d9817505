"""The Ray runner: Ray Data feeds (position, uri) rows to a pool of actors; each actor loads the model once
and reads and decodes its images with effnet's own code (the card's exact preprocessing, one bad file =
one error row, no decoded images in the object store). Only the small answers come back to the driver,
which writes the shards exactly as the local runner does. With a CUDA device each actor asks Ray for one
GPU (one model per GPU) and checks it where it runs.

A node that dies mid-job: Ray Data's actors restart (max_restarts=-1) wherever a CPU is or becomes free (a
replacement node, or one a finished actor releases) and retry their unfinished blocks (max_task_retries=-1);
an answer that arrives twice is dropped by its position (job._write_shards), so shards stay exactly once.
An actor that cannot run the job's engine (a node without CUDA for a CUDA engine, other weights) answers its
first call with effnet's error, naming its node (and GPU), and that ends the job.

Ray's own output stays out of effnet's: the workers' output stays in their log files (log_to_driver=False),
and the blocks are built in the driver (`from_blocks`), so no task workers are started besides the actors.
A local Ray started for a job gets a token of its own (Ray 2.60 turns token authentication on for it) in a
private temporary file, through RAY_AUTH_TOKEN_PATH, instead of writing ~/.ray/auth_token.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..engines import EngineChoice, on_this_machine
from ..errors import EffnetError
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

        context = ray.get_runtime_context()
        node = context.get_node_id()
        gpus = context.get_accelerator_ids().get("GPU", [])
        gpu = f", GPU {','.join(gpus)}" if gpus else ""
        where = f"Ray node {node[:12]} ({ray.util.get_node_ip_address()}{gpu})"
        # In the worker's log (Ray's session logs on that node): where this actor runs, with what Ray gave it.
        print(f"effnet actor: {where}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}",
              file=sys.stderr, flush=True)
        self.top, self.node, self.failure = top, node, None
        try:  # the device first: a node without it answers in a second, not after loading the weights
            engine = actor_engine(engine, decode_workers)
            resolved = resolve(model, weights, progress=False)
            if resolved.weights_sha256 != weights_sha256:  # a node with another file must not answer for this job
                raise WeightsError(f"the weights have sha256 {resolved.weights_sha256}, the job's are "
                                   f"{weights_sha256}")
            self.classifier = Classifier(resolved, backend=engine, batch_size=batch_size, decode=decode,
                                         decode_workers=decode_workers)
        except EffnetError as exc:
            # Kept for the first call, which raises it: Ray keeps only the text of an error raised here (and
            # prints its traceback), while an error from a call reaches the driver as itself, and ends the job.
            exc.args = (f"{where}: {exc}",)  # the same error (type, params), saying where
            self.failure = exc

    def __call__(self, batch):
        import pyarrow as pa

        if self.failure is not None:
            raise self.failure

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
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    with ray_connection(address):
        try:
            yield from _pool_rows(resolved, engine, batch_size, top, items, decode, workers, cpus_per_worker)
        except ray.exceptions.RayError as exc:
            cause = _effnet_cause(exc)
            if cause is None:
                raise
            # Ray Data appends its retry advice to the message; the first line is the actor's own.
            raise type(cause)(str(cause).split("\n", 1)[0], params=cause.params) from None


@contextmanager
def ray_connection(address: str | None) -> Iterator[None]:
    """Ray connected for one job: to the cluster at `address`, or to a local Ray started for it (and stopped
    after it); as it is when the caller has already connected."""
    import ray

    if ray.is_initialized():
        yield
        return
    settings = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        with _local_token():
            # Loopback only: a Ray for one job on this machine has no one else to talk to.
            ray.init(address="local", _node_ip_address="127.0.0.1", **settings)
            try:
                yield
            finally:
                ray.shutdown()
        return
    try:
        ray.init(address=address, **settings)
    except ray.exceptions.AuthenticationError:  # RAY_AUTH_MODE=token, and no token anywhere
        raise EffnetError(f"RAY_AUTH_MODE=token, and no token to give the Ray cluster at {address}: set "
                          "RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding it)"
                          ) from None
    except ConnectionError:  # after 20 s of retries, whose reasons (refused token, nothing there) Ray logged
        raise EffnetError(f"the Ray cluster at {address} did not accept this driver: is it up, and does it use "
                          "token authentication (Ray 2.60's default)? then give its token: RAY_AUTH_MODE=token "
                          "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it)") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _local_token() -> Iterator[None]:
    """The token of a local Ray of ours, in a private temporary file (RAY_AUTH_TOKEN_PATH, read by the Ray
    processes it starts too): Ray turns token authentication on for a local Ray and would otherwise write a
    token that outlives the job to ~/.ray/auth_token. A token or mode the user set is used as it is."""
    if any(os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        yield
        return
    folder = Path(tempfile.mkdtemp(prefix="effnet-ray-"))  # mode 0700
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    try:
        yield
    finally:
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):  # Ray sets RAY_AUTH_MODE=token itself
            os.environ.pop(name, None)
        shutil.rmtree(folder, ignore_errors=True)


def _effnet_cause(exc: BaseException) -> EffnetError | None:
    """The effnet error an actor raised, found in the chain of Ray's exceptions around it."""
    from ray.exceptions import RayError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EffnetError) and not isinstance(exc, RayError):  # not Ray's copy that wraps it
            return exc
        cause = getattr(exc, "cause", None)  # RayTaskError: the exception the task raised
        exc = cause if isinstance(cause, BaseException) else exc.__cause__ or exc.__context__
    return None


def _pool_rows(resolved: ResolvedModel, engine: EngineChoice, batch_size: int, top: int,
               items: list[tuple[int, str]], decode: str, workers: int | None, cpus_per_worker: int | None
               ) -> Iterator[tuple[Row, str]]:
    import pyarrow as pa
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_stats_logs = False
    ctx.wait_for_min_actors_s = 600  # the whole pool up before work starts: no node left idle
    ctx.max_consecutive_actor_init_deaths = 0  # an actor whose process dies starting ends the job, never a loop
    ctx.raise_original_map_exception = True  # an actor's effnet error as itself, not as Ray's UserCodeException
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
    # from_blocks reads the blocks' metadata here; from_arrow would start a task worker per CPU to read it,
    # processes Ray then stops as idle mid-job (their exit is what printed a crash report, see the docs).
    ds = ray.data.from_blocks(blocks)
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
