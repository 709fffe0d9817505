"""`effnet cache`: a real cache, filled by effnet itself (verified and rejected weights, an ONNX export,
an OpenVINO engine model with its compiled blob, an eval run, the digest memo), listed, removed from
and pruned."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from effnet.cache_contents import cache_entries, format_size, parse_size, prune, remove_entries
from effnet.cli import main
from effnet.errors import EffnetError, WeightsNotFoundError
from effnet.registry import WeightsEntry, weights_entry
from effnet.weights import download, file_sha256

LITE0 = "efficientnet_lite0"
DAY = 86400.0


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory, lite0_weights, photo_files):
    """An EFFNET_HOME that effnet's own code has filled."""
    home = tmp_path_factory.mktemp("effnet-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EFFNET_HOME", str(home))
        from effnet.backends import create_backend
        from effnet.engines import resolve_engine
        from effnet.evaluate import evaluate
        from effnet.export.cache import cached_onnx
        from effnet.resolved import resolve

        # Weights: a file under its own name that passes its sha256 check (a sidecar is written) ...
        (home / "weights").mkdir()
        mine = home / "weights" / "lite0-mine.pth"
        shutil.copyfile(lite0_weights, mine)
        entry = WeightsEntry(LITE0, "http://127.0.0.1:9/lite0-mine.pth", file_sha256(mine),
                             weights_entry(LITE0).preprocess)
        assert download(entry, progress=False) == mine
        # ... and a wrong file under an official name, set aside by a download attempt (offline).
        b0 = replace(weights_entry("efficientnet_b0"), url="http://127.0.0.1:9/tf_efficientnet_b0_aa-827b6e33.pth")
        (home / "weights" / b0.filename).write_bytes(b"not the official file\n" * 100)
        with pytest.raises(WeightsNotFoundError):
            download(b0, progress=False, timeout=5)

        resolved = resolve(LITE0, mine)  # remembers the digest in digests.json
        cached_onnx(resolved, batch=1)  # exports/<key>/model.onnx
        create_backend(resolved, resolve_engine("openvino", "fp32"))  # exports/<engine key>/ and openvino/<blob>
        data = home.parent / "val"
        data.mkdir()
        lines = []
        for name in ("coffee", "camera"):
            shutil.copyfile(photo_files[name], data / f"{name}.jpg")
            lines.append(f"{name}.jpg {967 if name == 'coffee' else 872}")
        (data / "val.txt").write_text("\n".join(lines) + "\n")
        evaluate(data, model=resolved, engines=[resolve_engine("torch", "fp32", device="cpu")])
    return home


@pytest.fixture
def cache(filled_cache, tmp_path, monkeypatch):
    """A private copy of the filled cache (tests remove things), with known last-use times:
    exports a day old, eval runs two days, blobs three days, weights ten days."""
    home = tmp_path / "home"
    shutil.copytree(filled_cache, home, symlinks=True)
    monkeypatch.setenv("EFFNET_HOME", str(home))
    age = {"exports": 1, "eval": 2, "openvino": 3, "weights": 10}
    now = time.time()
    for folder, _, names in os.walk(home):
        top = Path(folder).relative_to(home).parts[:1]
        for name in names:
            stamp = now - age.get(top[0] if top else "", 0) * DAY
            os.utime(Path(folder) / name, (stamp, stamp))
    return home


def disk_usage(path: Path) -> int:
    return sum((Path(f) / n).stat().st_size for f, _, names in os.walk(path) for n in names)


def test_listing_shows_every_kind_with_its_size(cache, capsys):
    entries = cache_entries()
    kinds = {e.kind for e in entries}
    assert {"weights", "rejected-weights", "export", "openvino-blob", "eval-run", "digests"} <= kinds
    assert sum(e.size for e in entries) == disk_usage(cache)  # every byte is in some entry
    for e in entries:
        if e.kind in ("export", "eval-run"):
            assert e.size == disk_usage(cache / e.name) > 0
    mine = next(e for e in entries if e.name == "weights/lite0-mine.pth")
    assert mine.kind == "weights" and "sha256 verified" in mine.detail
    assert mine.size == (cache / mine.name).stat().st_size + (cache / "weights/lite0-mine.pth.verified").stat().st_size
    rejected = next(e for e in entries if e.kind == "rejected-weights")
    assert rejected.name == "weights/tf_efficientnet_b0_aa-827b6e33.pth.rejected"
    run = next(e for e in entries if e.kind == "eval-run")
    assert f"{LITE0} torch-fp32: 2 images done" in run.detail

    assert main(["cache"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["NAME", "KIND", "SIZE", "LAST", "USED", "DETAIL"]
    for e in entries:
        assert e.name in table
    assert f"{len(entries)} entries, {format_size(disk_usage(cache))} in {cache}" in table

    assert main(["cache", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["root"] == str(cache) and listed["total"] == disk_usage(cache)
    assert [(e["name"], e["kind"], e["size"]) for e in listed["entries"]] == [(e.name, e.kind, e.size) for e in entries]


def test_remove_by_name(cache, capsys):
    export = next(e for e in cache_entries() if e.kind == "export")
    run = next(e for e in cache_entries() if e.kind == "eval-run")
    # An unknown name fails before anything is removed.
    assert main(["cache", "remove", export.name, "nothing-here"]) == 1
    assert "no entry 'nothing-here'" in capsys.readouterr().err and (cache / export.name).exists()

    # Whole names, or the last component where it is unambiguous.
    assert main(["cache", "remove", export.name, run.name.rsplit("/", 1)[1]]) == 0
    out = capsys.readouterr().out
    assert f"removed {export.name} ({format_size(export.size)})" in out and f"removed {run.name}" in out
    assert not (cache / export.name).exists() and not (cache / run.name).exists()
    # A weights file goes with its verification record, when asked for by name.
    removed = remove_entries(["weights/lite0-mine.pth"])
    assert [e.name for e in removed] == ["weights/lite0-mine.pth"]
    assert not any(p.name.startswith("lite0-mine") for p in (cache / "weights").iterdir())
    with pytest.raises(EffnetError, match="no entry"):
        remove_entries(["weights/lite0-mine.pth"])


def test_prune_removes_least_recently_used_derived_entries_first(cache, capsys):
    entries = cache_entries()
    size = lambda kinds: sum(e.size for e in entries if e.kind in kinds)  # noqa: E731
    keep = size({"weights", "rejected-weights", "digests", "export", "eval-run"})
    # Just under what is kept without the blobs: the blobs (3 days old) go, the newer entries stay.
    assert main(["cache", "prune", "--max-size", str(keep)]) == 0
    out = capsys.readouterr().out
    left = {e.kind for e in cache_entries()}
    assert "openvino-blob" not in left and {"export", "eval-run", "weights"} <= left
    assert "removed openvino/" in out and disk_usage(cache) <= keep

    # Down to 0: every derived entry goes, the weights never without --include-weights.
    assert main(["cache", "prune", "--max-size", "0", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out and {"export", "eval-run"} <= {e.kind for e in cache_entries()}
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    captured = capsys.readouterr()
    assert {e.kind for e in cache_entries()} == {"weights", "rejected-weights", "digests"}
    assert "--include-weights" in captured.err
    assert main(["cache", "prune", "--max-size", "0", "--include-weights", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {e["kind"] for e in report["removed"]} == {"weights", "rejected-weights"}
    assert [e.kind for e in cache_entries()] == ["digests"]


def test_prune_order_is_by_last_use(cache):
    blob = next(e for e in cache_entries() if e.kind == "openvino-blob")
    now = time.time()
    os.utime(cache / blob.name, (now, now))  # the blob becomes the most recently used derived entry
    derived = [e for e in cache_entries() if e.kind in ("export", "eval-run", "openvino-blob")]
    result = prune(disk_usage(cache) - sum(e.size for e in derived) + blob.size, dry_run=True)
    assert blob not in result.removed and {e.kind for e in result.removed} == {"export", "eval-run"}
    assert result.removed == sorted(result.removed, key=lambda e: e.last_used)


def test_unfinished_export_is_pruned_only_when_stale(cache):
    building = cache / "exports" / ".efficientnet_b0-abc.x1y2"
    building.mkdir()
    (building / "model.onnx").write_bytes(b"\0" * 1000)
    assert any(e.kind == "unfinished-export" for e in prune(0, dry_run=True).protected)
    stale = time.time() - 2 * 3600
    os.utime(building / "model.onnx", (stale, stale))
    assert ".efficientnet_b0-abc.x1y2" in {e.name.split("/")[-1] for e in prune(0, dry_run=True).removed}


@pytest.mark.parametrize("text, size", [("1G", 1 << 30), ("500M", 500 << 20), ("1.5GB", 3 << 29), ("2GiB", 2 << 30),
                                        ("123", 123), ("0", 0), ("64k", 64 << 10)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["cache", "prune", "--max-size", "lots"])
    assert info.value.code == 2 and "not a size" in capsys.readouterr().err
