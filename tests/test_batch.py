"""`effnet batch`, local engine: every input exactly once, rows equal classify's, resumable, refuses to mix.

Real Lite0 ImageNet weights on real photos (several crops of each, so a few dozen distinct images) plus
corrupt files; the torch engine, so that the reference answers come from the same engine.
"""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import (
    MODEL,
    TOP,
    assert_rows_equal_reference,
    make_bad_files,
    make_images,
    read_dataset,
    reference,
)

from effnet.batch import IDENTITY_FILE, IdentityMismatch, InputError, run_batch


@pytest.fixture(scope="module")
def job(tmp_path_factory, photo_arrays, photo_files):
    """A folder of 20 photos and 4 corrupt files, and classify's answers for them."""
    root = tmp_path_factory.mktemp("batch")
    images = make_images(root / "photos", photo_arrays)
    bad = make_bad_files(root / "photos" / "junk", photo_files["coffee"])
    from effnet.files import image_files

    files = [os.path.abspath(p) for p in image_files(root / "photos")]
    assert len(files) == len(images) + len(bad)
    return root, files, reference(files)


def test_local_rows_equal_classify_and_corrupt_files_are_error_rows(job, tmp_path):
    root, files, expected = job
    summary = run_batch([root / "photos"], tmp_path / "out", **MODEL, top=TOP, batch_size=4, shard_size=4)
    assert (summary.classified, summary.failed, summary.skipped) == (20, 4, 0)
    assert summary.exit_status == 1 and summary.shards_written == 6
    table = read_dataset(tmp_path / "out")
    assert table.schema.field("indices").type == pa.list_(pa.int32())
    assert table.schema.field("labels").type == pa.list_(pa.string())
    assert table.schema.field("probabilities").type == pa.list_(pa.float32())
    assert table.column("uri").to_pylist() == files  # shards in input order, rows in input order
    assert_rows_equal_reference(table, expected)
    errors = {r["uri"]: r["error"] for r in table.to_pylist() if r["error"]}
    assert set(errors) == {f for f in files if "/junk/" in f}
    assert all("\n" not in e for e in errors.values())
    coffee = next(r for r in table.to_pylist() if r["uri"].endswith("coffee-0.jpg"))
    assert coffee["indices"][0] == 967 and coffee["labels"][0] == "espresso"

    identity = json.loads((tmp_path / "out" / IDENTITY_FILE).read_text())
    import effnet

    assert identity["model"] == "efficientnet_lite0" and identity["runner"] == "local"
    assert identity["weights_sha256"] == effnet.resolve("efficientnet_lite0", "imagenet").weights_sha256
    assert identity["precision"] == "fp32" and identity["effnet_version"] == effnet.__version__
    assert identity["inputs"] == len(files) and len(identity["inputs_sha256"]) == 64


def test_rerun_resumes_missing_shards_does_nothing_when_done_and_refuses_to_mix(job, tmp_path):
    root, files, expected = job
    out = tmp_path / "out"
    args = dict(**MODEL, top=TOP, batch_size=4, shard_size=5)
    first = run_batch([root / "photos"], out, **args)
    assert first.shards_written == 5
    # A crash between shards: two shards never written; a crash inside one: a stale temporary file.
    (out / "part-000001-of-000005.parquet").unlink()
    (out / "part-000004-of-000005.parquet").unlink()
    (out / ".part-000004-of-000005.parquet.999.dead.tmp").write_bytes(b"PAR1 half a file")
    assert read_dataset(out).num_rows == len(files) - 9  # readers never see the temporary file
    again = run_batch([root / "photos"], out, **args)
    assert (again.shards_written, again.classified + again.failed, again.skipped) == (2, 9, len(files) - 9)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    table = read_dataset(out)
    assert table.column("uri").to_pylist() == files
    assert_rows_equal_reference(table, expected)

    done = run_batch([root / "photos"], out, **args)  # finished: does nothing and says so
    assert done.nothing_to_do and done.shards_written == 0 and done.skipped == len(files)
    assert done.skipped_failed == 4 and done.exit_status == 1
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("part-*")}

    with pytest.raises(IdentityMismatch, match="inputs_sha256"):  # other inputs, same folder
        run_batch([root / "photos" / "junk"], out, **args)
    with pytest.raises(IdentityMismatch, match="top"):  # another job's answers (top 5, not 3)
        run_batch([root / "photos"], out, **{**args, "top": 5})
    assert {p: p.stat().st_mtime_ns for p in out.glob("part-*")} == mtimes  # nothing touched

    fresh = run_batch([root / "photos" / "junk"], out, **args, restart=True)
    assert (fresh.classified, fresh.failed, fresh.skipped) == (0, 4, 0)
    assert sorted(read_dataset(out).column("uri").to_pylist()) == sorted(f for f in files if "/junk/" in f)


def test_text_lists_manifests_with_ids_and_uris(job, tmp_path):
    root, files, expected = job
    photos = [f for f in files if "/junk/" not in f]
    listing = tmp_path / "lists" / "some.txt"
    listing.parent.mkdir()
    # relative to the list's folder, a blank line and a comment, a file:// URI, a missing file
    rel = os.path.relpath(photos[0], listing.parent)
    missing = str(root / "photos" / "gone.jpg")
    listing.write_text(f"# photos\n{rel}\n\nfile://{photos[1]}\n{missing}\nfile://{missing}\n")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": photos[2:6], "id": [10, 11, 12, 13]}), manifest)

    summary = run_batch([listing, manifest], tmp_path / "out", **MODEL, top=TOP, shard_size=3)
    table = read_dataset(tmp_path / "out")
    rows = table.to_pylist()
    assert [r["uri"] for r in rows] == [photos[0], f"file://{photos[1]}", missing, f"file://{missing}"] + photos[2:6]
    assert [r["id"] for r in rows] == [None] * 4 + ["10", "11", "12", "13"]
    assert (summary.classified, summary.failed) == (6, 2)
    assert rows[1]["indices"] == expected[photos[1]][0]
    assert "gone.jpg" in rows[2]["error"] and "gone.jpg" in rows[3]["error"]
    for r in rows[4:]:
        assert r["indices"] == expected[r["uri"]][0]

    pq.write_table(pa.table({"uri": photos[:2], "id": ["a", "a"]}), tmp_path / "dup.parquet")
    with pytest.raises(InputError, match="more than once"):
        run_batch([tmp_path / "dup.parquet"], tmp_path / "out2", **MODEL)
    pq.write_table(pa.table({"path": photos[:2]}), tmp_path / "nouri.parquet")
    with pytest.raises(InputError, match="no 'uri' column"):
        run_batch([tmp_path / "nouri.parquet"], tmp_path / "out2", **MODEL)


def test_cli_summary_and_exit_status(job, tmp_path, capsys):
    from effnet.cli import main

    root, files, _ = job
    good = tmp_path / "good"
    good.mkdir()
    for f in files[:3]:
        shutil.copy(f, good)
    argv = ["batch", str(good), "--output", str(tmp_path / "out"), "--model", "efficientnet_lite0",
            "--backend", "torch", "--top", "2", "--shard-size", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "classified 3, failed 0, skipped 0" in err and "\r" not in err  # no progress bar off a terminal
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "nothing to do" in err and "skipped 3" in err
    assert main([*argv[:1], str(root / "photos" / "junk"), *argv[2:]]) == 1
    err = capsys.readouterr().err
    assert "another job's results" in err and "--restart" in err and "Traceback" not in err
    assert main([*argv[:1], str(root / "photos" / "junk"), *argv[2:], "--restart"]) == 1
    assert "classified 0, failed 4" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["torch", "onnxruntime", "openvino"])
def test_ray_actor_engine_runs_on_the_actors_cpus_not_the_nodes(kind):
    """A Ray actor holding 1 CPU runs its engine on 1 thread: OpenVINO and ONNX Runtime would otherwise
    start one per core of the node, k actors per node running k times too many threads; OpenVINO's threads
    are not pinned (every actor's process would pin its stream to the node's first core)."""
    import torch

    from effnet.backends import create_backend
    from effnet.batch.ray_runner import actor_engine
    from effnet.engines import resolve_engine
    from effnet.resolved import resolve

    threads = torch.get_num_threads()
    try:
        engine = actor_engine(resolve_engine(kind, device="cpu", local=False), 1)  # as the driver sends it
        settings = create_backend(resolve(MODEL["model"], MODEL["weights"]), engine).settings()
        assert settings["threads"] == 1, settings
        assert settings.get("streams", 1) == 1, settings
        assert settings.get("pinned", False) is False, settings
    finally:
        torch.set_num_threads(threads)


def test_object_store_output_is_refused_not_written_to_a_local_folder_named_like_it(job, tmp_path, monkeypatch):
    """`--output s3://...` would otherwise become a local folder `s3:/...` (and vanish with a cluster's pod)."""
    from effnet.errors import OutputError

    root, _, _ = job
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="file system this process writes"):
        run_batch([root / "photos"], "s3://bucket/answers", model=MODEL["model"], weights=MODEL["weights"],
                  backend=MODEL["backend"])
    assert list(tmp_path.iterdir()) == []


def test_a_list_or_manifest_given_as_a_uri_is_refused_not_classified_as_one_image():
    from effnet.batch import collect_inputs

    for uri in ("s3://bucket/manifests/photos.parquet", "gs://bucket/photos.txt", "file:///data/list.lst"):
        with pytest.raises(InputError, match="read from a path on this machine"):
            collect_inputs([uri])
    assert collect_inputs(["s3://bucket/photos/cat.jpg"]).uris == ["s3://bucket/photos/cat.jpg"]


def test_output_lock_one_writer_and_file_systems_without_locks_say_so(tmp_path, monkeypatch):
    import errno
    import fcntl

    from effnet.batch.store import Store
    from effnet.errors import OutputError

    with Store(tmp_path / "out").open():
        with pytest.raises(OutputError, match="another effnet batch run is writing"):
            with Store(tmp_path / "out").open():
                pass
    with Store(tmp_path / "out").open():  # released when the first run ends
        pass

    def no_locks(fd, op):  # as on some NFS and FUSE (object-store) mounts
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OutputError, match="must be on a file system with file locks"):
        with Store(tmp_path / "out").open():
            pass
