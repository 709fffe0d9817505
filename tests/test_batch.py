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


def _too_deep(folder, image: bytes, levels: int = 17) -> None:
    """Folders nested past PATH_MAX (4096 bytes) with an image at the bottom, made relative to each folder
    (as an unpacked archive or a sync tool makes them): the listing cannot even name what is down there."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, image)
        os.close(out)
    finally:
        os.close(fd)


def test_entries_that_cannot_be_listed_are_error_rows_and_fail_the_job_as_in_classify(job, tmp_path, capsys):
    """A link loop, a broken link and a path too long get a row with the reason, and exit status 1, as
    `classify` on the same folder (issue: no row, exit 0, "0 without an answer")."""
    from effnet.cli import main

    root, files, expected = job
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(files[0], photos / "a.jpg")
    shutil.copy(files[1], photos / "b.jpg")
    (photos / "here").symlink_to(".")  # back into the folder itself
    (photos / "self.jpg").symlink_to("self.jpg")
    (photos / "gone.jpg").symlink_to("nowhere.jpg")
    _too_deep(photos, (photos / "a.jpg").read_bytes())

    summary = run_batch([photos], tmp_path / "out", **MODEL, top=TOP, shard_size=2)
    assert (summary.classified, summary.failed, summary.total, summary.exit_status) == (2, 4, 6, 1)
    rows = read_dataset(tmp_path / "out").to_pylist()
    uris = [r["uri"] for r in rows]
    assert uris[:2] == [str(photos / "a.jpg"), str(photos / "b.jpg")]
    assert rows[0]["indices"] == expected[files[0]][0] and rows[1]["indices"] == expected[files[1]][0]
    deep = uris[2]
    assert deep.startswith(str(photos / ("d" * 250))) and len(deep) > 4000
    assert uris[3:] == [str(photos / n) for n in ("gone.jpg", "here", "self.jpg")]
    assert [r["error"] for r in rows[2:]] == [
        f"cannot list {deep}: file name too long",
        f"cannot list {photos / 'gone.jpg'}: broken symbolic link (to nowhere.jpg)",
        f"cannot list {photos / 'here'}: symbolic link loop (it leads back to a folder above it)",
        f"cannot list {photos / 'self.jpg'}: symbolic link loop"]
    assert all(r["indices"] is None for r in rows[2:])

    capsys.readouterr()
    assert main(["classify", "--model", MODEL["model"], "--backend", "torch", str(photos)]) == 1
    assert "4 folder entries skipped" in capsys.readouterr().err
    argv = ["batch", str(photos), "--output", str(tmp_path / "cli"), "--model", MODEL["model"], "--backend", "torch"]
    assert main(argv) == 1  # the same answer as classify's
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == [f"effnet: {r['error']} (its row carries the error)" for r in rows[2:]]
    assert err[-1].endswith("classified 2, failed 4, skipped 0 (already done); 6 inputs, 4 without an answer")
    assert sum("skipped" in line for line in err) == 1  # one meaning: already done by an earlier run


def test_output_folder_that_holds_other_files_is_refused_before_any_work(job, tmp_path, capsys):
    """An input folder as the output would mix images into the dataset and break every reader of it."""
    from effnet.cli import main
    from effnet.errors import OutputError

    root, files, _ = job
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, f in zip("abcd", files):
        shutil.copy(f, photos / f"{name}.jpg")
    before = sorted(os.listdir(photos))
    with pytest.raises(OutputError, match=r"holds files that are not this job's shards \(a.jpg, b.jpg, c.jpg and 1 "
                                          r"more\); a reader of the dataset takes every file in the folder"):
        run_batch([photos], photos, **MODEL)
    with pytest.raises(OutputError, match=r"\(photos\)"):  # the folder above an input folder, the same
        run_batch([photos], tmp_path, **MODEL)
    assert sorted(os.listdir(photos)) == before and sorted(os.listdir(tmp_path)) == ["photos"]  # nothing written
    assert main(["batch", str(photos), "--output", str(photos), "--model", MODEL["model"]]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith("give a new or empty folder as --output DIR")

    done = run_batch([photos], tmp_path / "out", **MODEL, top=TOP)  # a job's own folder: resumed, not refused
    (tmp_path / "out" / "_SUCCESS").write_text("")  # what Spark leaves: readers skip `_` names
    assert done.classified == 4 and run_batch([photos], tmp_path / "out", **MODEL, top=TOP).nothing_to_do


def test_random_weights_are_one_network_in_every_process(job, tmp_path):
    """`--weights random` is seeded: two processes compute the same network, so a resumed random job gives
    exactly the rows of an uninterrupted one, and its identity records the seed."""
    import subprocess

    from helpers import effnet_command, effnet_env

    root, files, _ = job
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in files[:6:2]:
        shutil.copy(f, photos)
    argv = ["batch", photos, "--model", MODEL["model"], "--weights", "random", "--backend", "torch", "--shard-size",
            "1", "--top", "5"]

    def run(output):
        done = subprocess.run(effnet_command(*argv, "--output", output), env=effnet_env(tmp_path / "home"),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    run(tmp_path / "whole")
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for shard in ("part-000000-of-000003.parquet", "part-000002-of-000003.parquet"):
        (tmp_path / "resumed" / shard).unlink()  # as if the first process had stopped after shard 1
    run(tmp_path / "resumed")  # another process, another random initialisation: the same seed
    whole, resumed = (read_dataset(tmp_path / d).to_pylist() for d in ("whole", "resumed"))
    assert resumed == whole and all(r["probabilities"] for r in whole)
    identity = json.loads((tmp_path / "resumed" / IDENTITY_FILE).read_text())
    assert identity["weights_sha256"] is None and identity["weights_seed"] == 0
