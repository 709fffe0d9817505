"""`effnet batch --engine ray`: on a local Ray (ray.init) and on a real two-node cluster (head + worker node),
each inside a private network namespace (loopback only: Ray would otherwise advertise the machine's
outside address) and a private PID namespace, so that every Ray process a test starts dies with it: the
test kills the namespace's process group by its id, and the kernel ends the rest. On the cluster, the
driver is killed at random moments, and (another test) the worker node is killed while the job runs."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray.data  # noqa: F401  (the [ray] extra: these tests are meant to run)
from helpers import (
    MODEL,
    TOP,
    assert_rows_equal_reference,
    make_bad_files,
    make_images,
    read_dataset,
    reference,
)


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", "ip link set lo up"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs root, unshare and ip (network namespaces)")


@pytest.fixture
def scratch():
    """A short private folder (Ray's socket paths must stay under 108 bytes) mounted over /tmp/ray inside
    the namespace, so Ray's session files never land in, or mix with, the shared /tmp/ray."""
    root = Path(tempfile.mkdtemp(prefix="efr", dir="/tmp"))
    (root / "home").mkdir()
    (root / "ray").mkdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)


def in_namespace(script: str, scratch: Path, timeout: float) -> str:
    """Run a bash script as pid 1 of fresh network + PID + mount namespaces; its process group is killed at
    the end whatever happens (and with pid 1 gone, the kernel kills every Ray process inside)."""
    os.makedirs("/tmp/ray", exist_ok=True)  # the mount point (Ray's fixed default temp dir)
    path = scratch / "job.sh"
    path.write_text("set -u\nip link set lo up\nmount --bind " + str(scratch / "ray") + " /tmp/ray\n" + script)
    env = {**os.environ, "HOME": str(scratch / "home"), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(scratch)}  # Ray's temp dir is then scratch/ray too; a driver's kept log lands here
    log = scratch / "log.txt"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    return log.read_text(errors="replace")


def effnet_batch(*args: str) -> str:
    return " ".join([sys.executable, "-m", "effnet.cli", "batch", *args, "--model", MODEL["model"], "--weights",
                     MODEL["weights"], "--backend", MODEL["backend"], "--top", str(TOP)])


@pytest.fixture(scope="module")
def photos(tmp_path_factory, photo_arrays, photo_files):
    folder = tmp_path_factory.mktemp("rayphotos")
    make_images(folder, photo_arrays, per_photo=4)
    make_bad_files(folder / "junk", photo_files["coffee"])
    from effnet.files import image_files

    files = [os.path.abspath(p) for p in image_files(folder)]
    return folder, files, reference(files)


def effnet_lines_only(stderr: str) -> list[str]:
    """The driver's stderr, asserted to hold effnet's lines only: no Ray log line, warning, traceback or a
    worker's crash report."""
    lines = stderr.splitlines()
    assert lines and all(line.startswith("effnet: ") for line in lines), stderr[-4000:]
    return lines


def ray_worker_logs(scratch: Path) -> dict[str, str]:
    """The output of every Ray worker process of the namespace's sessions (Ray's temp dir is scratch/ray)."""
    return {p.name: p.read_text(errors="replace") for p in (scratch / "ray").glob("session_*/logs/worker-*.err")}


def test_local_ray_rows_equal_classify(photos, scratch, tmp_path):
    """A local Ray's rows are classify's; Ray's output stays out of effnet's stderr, its token out of HOME."""
    folder, files, expected = photos
    out = tmp_path / "out"
    cmd = effnet_batch(str(folder), "--output", str(out), "--engine", "ray", "--workers", "2", "--batch-size", "2",
                       "--shard-size", "5")
    log = in_namespace(f"{cmd} 2> {scratch}/stderr.txt\necho \"rc=$?\"\n", scratch, timeout=150)
    stderr = (scratch / "stderr.txt").read_text(errors="replace")
    assert "rc=1" in log, log[-3000:] + stderr[-3000:]  # 1: the corrupt files are error rows, the job itself ran
    lines = effnet_lines_only(stderr)
    assert lines[0] == "effnet: ray: 2 workers x 1 CPUs on 1 nodes" and "classified 20, failed 4" in lines[-1]
    # The local Ray's token was a temporary file of effnet's, gone with it, as is the driver's Ray log
    assert not (scratch / "home" / ".ray").exists()
    assert not list(scratch.glob("effnet-ray-*")), list(scratch.iterdir())
    # Only the actors ran in Ray's workers: no Ray Data tasks (their workers, stopped as idle mid-job, were
    # the ones whose crash report reached the terminal)
    workers = ray_worker_logs(scratch)
    assert sum("effnet actor: Ray node" in text for text in workers.values()) == 2, workers
    assert not any(":task_name:" in text for text in workers.values()), workers
    table = read_dataset(out)
    assert table.column("uri").to_pylist() == files
    assert_rows_equal_reference(table, expected)
    assert json.loads((out / "_effnet_batch.json").read_text())["runner"] == "ray"
    # finished: the same command does nothing and says so (no Ray needed to find that out)
    again = subprocess.run(cmd.split(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "nothing to do" in again.stderr


CLUSTER = """
# Ray 2.60's token authentication, as on a real cluster: one token, given to every node and driver.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
common="--node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 80000000 --disable-usage-stats"
ray start --head --port 6379 --include-dashboard false $common > {s}/head.txt 2>&1 || exit 3
ray start --address 127.0.0.1:6379 $common > {s}/worker.txt 2>&1 || exit 4
export RAY_ADDRESS=127.0.0.1:6379
check() {{ python -c 'import sys, test_batch_ray as t; t.snapshot(sys.argv[1], sys.argv[2])' {out} {s}/snapshots.jsonl; }}
# kill 1: a random moment after the first shard is written (mid-work); kill 2: any random moment
for t in {kills}; do
  {cmd} >> {s}/driver.txt 2>&1 &
  pid=$!
  if [ "$t" = "${{t#after-work}}" ]; then sleep $t; else
    while kill -0 $pid 2>/dev/null && ! ls {out}/part-* > /dev/null 2>&1; do sleep 0.1; done
    sleep ${{t#after-work+}}
  fi
  kill -9 $pid && echo "killed after $t s" || echo "finished before $t s"
  wait $pid
  check
done
{cmd} >> {s}/driver.txt 2>&1; echo "final rc=$?"
{cmd} >> {s}/driver.txt 2>&1; echo "again rc=$?"
# No `ray stop` (it stops by name): this script is pid 1 of its PID namespace, and when it exits the kernel
# ends every Ray process of both nodes; in_namespace kills its process group should it hang.
"""


def snapshot(output: str, record: str) -> None:
    """Run inside the namespace after each kill: what a reader sees then (part file -> its uris)."""
    parts = {p.name: pq.read_table(p).column("uri").to_pylist() for p in sorted(Path(output).glob("part-*"))}
    with open(record, "a") as f:
        f.write(json.dumps(parts) + "\n")


def test_two_node_cluster_work_on_both_nodes_exactly_once_after_driver_kills(photos, scratch, tmp_path):
    folder, files, expected = photos
    out, shard = tmp_path / "out", 3
    cmd = effnet_batch(str(folder), "--output", str(out), "--engine", "ray", "--workers", "2", "--batch-size", "2",
                       "--shard-size", str(shard))
    rng = random.Random(int(os.environ.get("EFFNET_KILL_SEED", random.randrange(1 << 30))))
    # Kill 1 lands within 0.3 s of the first shard file, while later shards are still being computed (the
    # whole job takes about 2 s after it); kill 2 is any moment of the next run, which may well finish first.
    kills = f"after-work+{rng.uniform(0.0, 0.3):.1f} {rng.uniform(0.5, 12.0):.1f}"
    log = in_namespace(CLUSTER.format(s=scratch, out=out, cmd=cmd, kills=kills), scratch, timeout=300)
    driver = (scratch / "driver.txt").read_text(errors="replace") if (scratch / "driver.txt").exists() else ""
    assert "final rc=1" in log and "again rc=1" in log, log + driver[-3000:]
    assert "nothing to do" in "".join(driver.splitlines()[-2:])
    print(log)  # which kills landed while the driver ran (shown with -s or on failure)

    # after every kill: whole shards only, each exactly its slice of the inputs, no duplicates
    for line in (scratch / "snapshots.jsonl").read_text().splitlines():
        for name, uris in json.loads(line).items():
            k = int(name.split("-")[1])
            assert uris == files[k * shard:(k + 1) * shard], name
    table = read_dataset(out)
    assert table.column("uri").to_pylist() == files  # every input exactly once, in order
    assert_rows_equal_reference(table, expected)
    nodes: dict[str, int] = {}
    for part in out.glob("part-*.parquet"):
        for node, count in json.loads(pq.read_schema(part).metadata[b"effnet.nodes"]).items():
            nodes[node] = nodes.get(node, 0) + count
    assert len(nodes) == 2 and sum(nodes.values()) == len(files), (nodes, log)
    assert "killed after" in log, log  # at least one kill landed while the driver was running


@pytest.fixture(scope="module")
def many_photos(photos, tmp_path_factory):
    """204 inputs: the 20 photos ten times each under distinct names (hard links: no extra disk, the same
    answers), and the 4 corrupt files once. Enough work that a node can die while the job is half done."""
    folder, files, expected = photos
    big = tmp_path_factory.mktemp("manyphotos")
    original: dict[str, str] = {}
    for f in files:
        rel = Path(f).relative_to(folder)
        copies = 1 if isinstance(expected[f], str) else 10
        for c in range(copies):
            link = big / rel.parent / (rel.name if c == 0 else f"{rel.stem}-c{c}{rel.suffix}")
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, link)
            original[os.path.abspath(link)] = f
    from effnet.files import image_files

    return big, [os.path.abspath(p) for p in image_files(big)], original, expected


KILL_NODE = """\
\"\"\"SIGKILL one Ray node by pid: every process in its process group (raylet, log monitor, agents; the node was
started under setsid) and every descendant of those (Ray puts its worker processes, the actors among them,
in process groups of their own). Records what it killed as JSON.\"\"\"
import json, os, signal, sys

pgid, record = int(sys.argv[1]), sys.argv[2]
procs = {}
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        procs[int(name)] = (int(fields[1]), int(fields[2]), cmd)
victims = {pid for pid, (_, group, _) in procs.items() if group == pgid}
while True:
    more = {pid for pid, (parent, _, _) in procs.items() if parent in victims} - victims
    if not more:
        break
    victims |= more
for pid in victims:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
with open(record, "w") as f:
    json.dump({pid: procs[pid][2][:200] for pid in sorted(victims)}, f)
"""

NODE_DIES = """
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
common="--node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 80000000 --disable-usage-stats"
# The head checks every node's health each second instead of every 3 s (5 misses mark a node dead): the
# test waits about 5 s instead of 15 for Ray to notice the killed node; nothing else changes.
RAY_health_check_period_ms=1000 ray start --head --port 6379 --include-dashboard false $common > {s}/head.txt 2>&1 || exit 3
# The worker node in a session of its own: its process group id is this bash's pid, which exec hands to ray start.
setsid bash -c "echo \\$\\$ > {s}/worker.pgid; exec ray start --address 127.0.0.1:6379 $common" > {s}/worker.txt 2>&1 || exit 4
export RAY_ADDRESS=127.0.0.1:6379
echo "cluster up (${{SECONDS}} s)"
{cmd} > {s}/driver.txt 2>&1 &
pid=$!
# Bounded waits throughout. First: until this run's first shard (the pool is up and answering), at most 240 s.
for i in $(seq 2400); do kill -0 $pid 2>/dev/null && ! ls {out}/part-* > /dev/null 2>&1 || break; sleep 0.1; done
sleep {delay}
kill -0 $pid 2>/dev/null && echo "driver running at the node kill, first shard + {delay} s (${{SECONDS}} s)"
ls {out} > {s}/at_kill.txt
python {s}/kill_node.py $(cat {s}/worker.pgid) {s}/killed.json
# Ray finds the node dead after its health checks (about 5 s); the job goes on: wait at most 240 s.
for i in $(seq 240); do kill -0 $pid 2>/dev/null || break; sleep 1; done
if kill -0 $pid 2>/dev/null; then
  echo "driver still running after 240 s: killed, then the same command again"
  kill -9 $pid; wait $pid
  {cmd} >> {s}/driver.txt 2>&1; echo "rerun rc=$?"
else
  wait $pid; echo "first rc=$? (${{SECONDS}} s)"
fi
"""


def test_two_node_cluster_worker_node_killed_mid_job_exactly_once(many_photos, scratch, tmp_path):
    """The worker node dies (SIGKILL of all its processes) while the job runs. Ray restarts the lost actor
    wherever a CPU frees up and retries its unfinished batches; answers that arrive twice are dropped by
    position. The job ends with every input exactly once, on the head node alone (or, should the driver
    hang, after the same command again: the default --workers then fits the surviving cluster)."""
    folder, files, original, expected = many_photos
    out, shard = tmp_path / "out", 10
    # No --workers: one actor per CPU of the cluster as found at start (two now, one for a rerun).
    cmd = effnet_batch(str(folder), "--output", str(out), "--engine", "ray", "--batch-size", "2",
                       "--shard-size", str(shard))
    rng = random.Random(int(os.environ.get("EFFNET_KILL_SEED", random.randrange(1 << 30))))
    delay = f"{rng.uniform(0.0, 1.0):.1f}"  # the rest of the job takes 10-20 s: the kill always lands mid-work
    (scratch / "kill_node.py").write_text(KILL_NODE)
    log = in_namespace(NODE_DIES.format(s=scratch, out=out, cmd=cmd, delay=delay), scratch, timeout=600)
    driver = (scratch / "driver.txt").read_text(errors="replace") if (scratch / "driver.txt").exists() else ""
    summary = [line for line in driver.splitlines() if line.startswith("effnet: ") and "classified" in line]
    print(log, *summary, sep="\n")  # which way the job ended, rows per node (shown with -s or on failure)
    assert "first rc=1" in log or "rerun rc=1" in log, log + driver[-4000:]  # 1: the corrupt files' rows

    # the kill landed mid-job, on a node that ran an actor
    assert "driver running at the node kill" in log, log + driver[-3000:]
    killed = json.loads((scratch / "killed.json").read_text())
    assert any("raylet" in c for c in killed.values()) and any("MapWorker" in c for c in killed.values()), killed
    count = -(-len(files) // shard)
    done_at_kill = [n for n in (scratch / "at_kill.txt").read_text().split() if n.startswith("part-")]
    assert 1 <= len(done_at_kill) < count, done_at_kill

    # every input exactly once, in order; error rows only for the corrupt files; classify's answers
    assert not list(out.glob(".*.tmp"))
    table = read_dataset(out)
    assert table.column("uri").to_pylist() == files
    for row in table.to_pylist():
        want = expected[original[row["uri"]]]
        if isinstance(want, str):
            assert row["error"] and row["indices"] is None and row["probabilities"] is None, row
        else:
            assert row["error"] is None and row["indices"] == want[0] and row["labels"] == want[1], row
            np.testing.assert_allclose(row["probabilities"], np.float32(want[2]), atol=1e-5)
    assert sum(r is not None for r in table.column("error").to_pylist()) == 4 and len(files) == 204
    rows = sum(int(pq.read_schema(p).metadata[b"effnet.rows"]) for p in out.glob("part-*.parquet"))
    assert rows == len(files) and len(list(out.glob("part-*.parquet"))) == count


NO_TOKEN = """
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
ray start --head --port 6379 --include-dashboard false --node-ip-address 127.0.0.1 --num-cpus 1 \\
  --object-store-memory 80000000 --disable-usage-stats > {s}/head.txt 2>&1 || exit 3
# The driver without the cluster's token: neither mode nor token, then the mode without a token
env -u RAY_AUTH_MODE -u RAY_AUTH_TOKEN {cmd} 2> {s}/unset.txt; echo "unset rc=$?"
env -u RAY_AUTH_TOKEN {cmd} 2> {s}/mode.txt; echo "mode rc=$?"
"""


def test_cluster_whose_token_the_driver_lacks_one_line_saying_how_to_give_it(photos, scratch, tmp_path):
    """A cluster with token authentication, a driver without its token: one line saying how to give it
    (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN), exit 1; not Ray's traceback, nor its 20 s of retry warnings."""
    folder, _, _ = photos
    cmd = effnet_batch(str(folder), "--output", str(tmp_path / "out"), "--runner", "ray", "--ray-address",
                       "127.0.0.1:6379", "--batch-size", "2")
    log = in_namespace(NO_TOKEN.format(s=scratch, cmd=cmd), scratch, timeout=240)
    for case in ("unset", "mode"):
        stderr = (scratch / f"{case}.txt").read_text(errors="replace") if (scratch / f"{case}.txt").exists() else ""
        assert f"{case} rc=1" in log, log + stderr[-3000:]
        (line,) = effnet_lines_only(stderr)
        assert line.startswith("effnet: error: ") and "127.0.0.1:6379" in line, line
        assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line, line
    assert not list((tmp_path / "out").glob("part-*"))


GPU_CLUSTER = """
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(32))')
# Two GPUs declared on a machine that has none: Ray schedules by the declared resource
ray start --head --port 6379 --include-dashboard false --node-ip-address 127.0.0.1 --num-cpus 2 --num-gpus 2 \\
  --object-store-memory 80000000 --disable-usage-stats > {s}/head.txt 2>&1 || exit 3
export RAY_ADDRESS=127.0.0.1:6379
{cmd} 2> {s}/stderr.txt; echo "rc=$?"
"""


def test_cuda_pool_one_actor_per_declared_gpu_and_a_node_without_cuda_ends_the_job(photos, scratch, tmp_path):
    """`--device cuda` on Ray: as many actors as the cluster declares GPUs, each given its own GPU (Ray sets
    CUDA_VISIBLE_DEVICES), each checking the device where it runs. Here the node has no usable CUDA: the job
    ends (bounded by the namespace's timeout, not Ray's endless actor retries) with effnet's one-line error
    naming the node, its GPU and what is missing."""
    folder, _, _ = photos
    cmd = effnet_batch(str(folder), "--output", str(tmp_path / "out"), "--runner", "ray", "--device", "cuda",
                       "--batch-size", "2")
    log = in_namespace(GPU_CLUSTER.format(s=scratch, cmd=cmd), scratch, timeout=240)
    stderr = (scratch / "stderr.txt").read_text(errors="replace") if (scratch / "stderr.txt").exists() else ""
    assert "rc=1" in log, log + stderr[-3000:]
    pool, error = effnet_lines_only(stderr)
    assert pool == "effnet: ray: 2 workers x 1 CPUs + 1 GPU on 1 nodes"
    assert re.fullmatch(r"effnet: error: Ray node [0-9a-f]{12} \(127\.0\.0\.1, GPU [01]\): --device cuda:0: .*",
                        error), error
    assert "CPU-only build" in error or "sees no GPU" in error, error
    record = r"effnet actor: Ray node \w+ \(127\.0\.0\.1, GPU (\d)\), CUDA_VISIBLE_DEVICES=(\d)"
    records = [m.groups() for text in ray_worker_logs(scratch).values() for m in re.finditer(record, text)]
    assert sorted(records) == [("0", "0"), ("1", "1")], (records, ray_worker_logs(scratch))
