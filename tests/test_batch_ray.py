"""`effnet batch --engine ray`: on a local Ray (ray.init) and on a real two-node cluster (head + worker node),
each inside a private network namespace (loopback only: Ray would otherwise advertise the machine's
outside address) and a private PID namespace, so that every Ray process a test starts dies with it: the
test kills the namespace's process group by its id, and the kernel ends the rest."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

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
           "PYTHONPATH": str(Path(__file__).parent)}
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
    from effnet.preprocessing import image_files

    files = [os.path.abspath(p) for p in image_files(folder)]
    return folder, files, reference(files)


def test_local_ray_rows_equal_classify(photos, scratch, tmp_path):
    folder, files, expected = photos
    out = tmp_path / "out"
    cmd = effnet_batch(str(folder), "--output", str(out), "--engine", "ray", "--workers", "2", "--batch-size", "2",
                       "--shard-size", "5")
    log = in_namespace(f"{cmd}\necho \"rc=$?\"\n", scratch, timeout=150)
    assert "rc=1" in log, log[-3000:]  # 1: the corrupt files are error rows, the job itself ran
    table = read_dataset(out)
    assert table.column("uri").to_pylist() == files
    assert_rows_equal_reference(table, expected)
    assert json.loads((out / "_effnet_batch.json").read_text())["engine"] == "ray"
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
