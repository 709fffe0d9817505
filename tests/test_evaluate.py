"""`effnet eval`: tiny datasets in all three layouts, real Lite0 weights on real photos, exact accuracies.

What Lite0 predicts on the JPEG photos (conftest), measured once, and the labels chosen from it:
  coffee    967 espresso (p 0.95)              label 967 -> top-1 and top-5
  camera    872 tripod (p 0.94)                label 872 -> top-1 and top-5
  chelsea   282, 285, 281 tabby (p 0.18), ...  label 281 (rank 3) -> top-5 only
  rocket    657 missile, 744 projectile, ...   label 744 (rank 2) -> top-5 only
  astronaut 560 football helmet, 450, ...      label 0 (tench)    -> neither
plus broken.JPEG (not an image), which must be listed and excluded. So: 5 counted, top-1 2/5, top-5 4/5.
"""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from effnet.calibration import calibration_set
from effnet.classifier import Classifier
from effnet.datasets import Dataset, Layout, Sample, load_dataset
from effnet.errors import DatasetError, EffnetError
from effnet.contract import num_classes
from effnet.evaluate import (Configuration, Evaluation, column_directory, content_sha256, eval_engines, evaluate,
                             open_stores, wilson_interval)
from effnet.labels import imagenet_wnids
from effnet.resolved import resolve

LABELS = {"coffee": 967, "camera": 872, "chelsea": 281, "rocket": 744, "astronaut": 0}
BROKEN_LABEL = 3
COUNT, TOP1, TOP5 = 5, 40.0, 80.0
MODEL = "efficientnet_lite0"


def _write_images(folder: Path, photo_files: dict[str, Path], names: dict[str, str]) -> None:
    """Copy photo `name` to folder/names[name]; 'broken' becomes a file that is not an image."""
    for name, rel in names.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if name == "broken":
            target.write_bytes(b"this is not a JPEG")
        else:
            shutil.copy(photo_files[name], target)


def _label(name: str) -> int:
    return BROKEN_LABEL if name == "broken" else LABELS[name]


def make_annotations(root: Path, photo_files) -> Path:
    names = {n: f"imgs/{n}.JPEG" for n in [*LABELS, "broken"]}  # relative paths with a sub-folder
    _write_images(root, photo_files, names)
    (root / "val.txt").write_text("".join(f"{rel} {_label(n)}\n" for n, rel in names.items()))
    return root


def make_wnid_folders(root: Path, photo_files) -> Path:
    wnids = imagenet_wnids()
    _write_images(root, photo_files, {n: f"{wnids[_label(n)]}/{n}.JPEG" for n in [*LABELS, "broken"]})
    (root / wnids[0] / "notes.txt").write_text("not an image: ignored")
    return root


def make_loc_csv(root: Path, photo_files, image_dir: Path | None = None) -> Path:
    wnids = imagenet_wnids()
    ids = {n: f"ILSVRC2012_val_{i:08d}" for i, n in enumerate([*LABELS, "broken"], 1)}
    _write_images(image_dir or root, photo_files, {n: f"{i}.JPEG" for n, i in ids.items()})
    rows = [f"{i},{wnids[_label(n)]} 10 20 110 220 {wnids[_label(n)]} 5 5 50 50" for n, i in ids.items()]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return root


LAYOUTS = {Layout.ANNOTATIONS: make_annotations, Layout.WNID_FOLDERS: make_wnid_folders, Layout.LOC_CSV: make_loc_csv}


@pytest.fixture(scope="module")
def classifier(lite0_weights) -> Classifier:
    return Classifier(MODEL, lite0_weights, backend="torch", precision="fp32", device="cpu", batch_size=2)


def run_with(dataset, classifier, resume_dir=None, others=()):
    """One decoder (the checker's) and the classifier's backend, beside `others`, as `effnet eval` runs them,
    each column's results in its folder under `resume_dir` (None: memory only)."""
    backends = [classifier.backend, *others]
    columns = [Configuration(b.name, b.precision, b.device) for b in backends]
    stores = open_stores(resume_dir, classifier.resolved, columns, dataset, num_classes())
    return Evaluation(dataset, classifier.resolved, backends, stores, batch_size=2)


@pytest.fixture
def annotated(tmp_path, photo_files) -> Path:
    return make_annotations(tmp_path / "data", photo_files)


# ---- accuracy, exactly, in every layout --------------------------------------------------------

@pytest.mark.parametrize("layout", list(LAYOUTS), ids=lambda layout: layout.value)
def test_each_layout_gives_the_exact_accuracy(layout, tmp_path, photo_files, lite0_weights):
    data = LAYOUTS[layout](tmp_path / "data", photo_files)
    dataset = load_dataset(data)
    assert dataset.layout is layout and len(dataset) == 6
    [broken] = [s.key for s in dataset.samples if s.label == BROKEN_LABEL]
    result = evaluate(data, model=MODEL, weights=lite0_weights, batch_size=2, resume_dir=tmp_path / "runs")
    assert (result.count, result.top1, result.top5) == (COUNT, TOP1, TOP5)
    assert result.configurations[0].top1_correct == 2 and result.configurations[0].top5_correct == 4
    [(image, why)] = result.failed  # the unreadable image: listed, excluded from the count
    assert image == broken and Path(broken).name in why and "not an image" in why
    assert result.card is None and result.evaluated_now == COUNT
    summary = result.to_dict()
    assert (summary["count"], summary["top1"], summary["top5"]) == (COUNT, TOP1, TOP5)
    assert summary["failed"][0]["image"] == image
    json.dumps(summary)  # JSON-ready as it is


def test_accuracy_intervals_are_wilson():
    low, high = wilson_interval(2, 5)
    assert (low, high) == (pytest.approx(11.762, abs=1e-3), pytest.approx(76.928, abs=1e-3))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(100.0)
    assert wilson_interval(0, 0) == (0.0, 100.0)


def test_labels_file_can_be_passed_or_be_data(tmp_path, photo_files):
    data = make_annotations(tmp_path / "a", photo_files)
    moved = tmp_path / "labels.txt"
    shutil.move(data / "val.txt", moved)
    by_option = load_dataset(data, annotations=moved)
    assert by_option.layout is Layout.ANNOTATIONS and len(by_option) == 6
    assert by_option.samples[0] == Sample("imgs/coffee.JPEG", data / "imgs/coffee.JPEG", 967)
    shutil.move(moved, data / "val.txt")
    assert load_dataset(data / "val.txt").samples == by_option.samples  # DATA = the file, images beside it

    csv_root = make_loc_csv(tmp_path / "c", photo_files)
    direct = load_dataset(csv_root / "LOC_val_solution.csv")
    assert direct.layout is Layout.LOC_CSV and direct.samples == load_dataset(csv_root).samples
    assert {s.label for s in direct.samples} == {*LABELS.values(), BROKEN_LABEL}


def test_loc_csv_finds_images_in_the_kaggle_tree(tmp_path, photo_files):
    root = tmp_path / "kaggle"
    images = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    make_loc_csv(root, photo_files, image_dir=images)
    dataset = load_dataset(root)
    assert dataset.root == images and len(dataset) == 6


# ---- resume --------------------------------------------------------------------------------------

def test_interrupted_run_resumes_without_counting_twice(annotated, classifier, tmp_path):
    dataset = load_dataset(annotated)
    first = run_with(dataset, classifier, tmp_path)
    results = first.results_file
    run = first.run()
    done = list(itertools.islice(run, 3))  # "Ctrl-C" after three images
    run.close()
    assert len(results.read_text().splitlines()) == 3 == len(done)

    second = run_with(dataset, classifier, tmp_path)
    assert len(second.pending()) == 6 - 3
    for _ in second.run():
        pass
    result = second.result()
    assert (result.count, result.top1, result.top5) == (COUNT, TOP1, TOP5)
    assert result.evaluated_now == COUNT - 3
    keys = [json.loads(line)["image"] for line in results.read_text().splitlines()]
    assert sorted(keys) == sorted(s.key for s in dataset.samples)  # each image stored exactly once

    third = run_with(dataset, classifier, tmp_path)  # everything stored: nothing to do, same totals
    assert third.pending() == [s for s in dataset.samples if s.key.endswith("broken.JPEG")]  # failures are retried
    assert list(third.run())[0]["image"].endswith("broken.JPEG")
    again = third.result()
    assert (again.count, again.top1, again.top5, len(again.failed)) == (COUNT, TOP1, TOP5, 1)


def test_torn_and_duplicate_lines_are_harmless(annotated, classifier, tmp_path):
    dataset = load_dataset(annotated)
    first = run_with(dataset, classifier, tmp_path)
    results = first.results_file
    list(itertools.islice(first.run(), 2))
    lines = results.read_text().splitlines()
    # A duplicated line (say, two runs racing) and a line torn by a kill in the middle of a write.
    results.write_text("\n".join([*lines, lines[-1]]) + "\n" + lines[0][: len(lines[0]) // 2])
    evaluation = run_with(dataset, classifier, tmp_path)
    assert len(evaluation.pending()) == 4 + sum("error" in json.loads(x) for x in lines)
    for _ in evaluation.run():
        pass
    result = evaluation.result()
    assert (result.count, result.top1, result.top5) == (COUNT, TOP1, TOP5)
    assert all(json.loads(line) for line in results.read_text().splitlines())  # the torn tail was cut off


def test_evaluate_twice_reuses_the_run_folder(annotated, lite0_weights, tmp_path):
    kwargs = dict(model=MODEL, weights=lite0_weights, resume_dir=tmp_path / "runs")
    first = evaluate(annotated, **kwargs)
    second = evaluate(annotated, **kwargs)
    assert second.results_file == first.results_file and second.evaluated_now == 0
    assert (second.count, second.top1, second.top5) == (first.count, first.top1, first.top5)
    run = json.loads((first.results_file.parent / "run.json").read_text())
    assert run["model"] == MODEL and run["weights_sha256"] == resolve(MODEL, lite0_weights).weights_sha256
    # Labels do not change predictions: relabelled images are counted against their new labels, reusing
    # the stored predictions (their content is unchanged).
    text = (annotated / "val.txt").read_text().replace("coffee.JPEG 967", "coffee.JPEG 968")
    (annotated / "val.txt").write_text(text)
    relabelled = evaluate(annotated, **kwargs)
    assert relabelled.results_file == first.results_file and relabelled.evaluated_now == 0
    assert relabelled.top1 == 20.0


def test_column_folder_is_keyed_by_everything_that_changes_its_results(lite0_weights, tmp_path, photo_files):
    lite0 = resolve(MODEL, lite0_weights)
    base = column_directory(tmp_path, lite0, Configuration())
    assert base == column_directory(tmp_path, lite0, Configuration())
    # "imagenet" for Lite0 is served by the same file: the same weights, by sha256, the same column.
    assert base == column_directory(tmp_path, resolve(MODEL, "imagenet"), Configuration())
    calibration = [tmp_path / "cal-a", tmp_path / "cal-b"]
    for folder, photo in zip(calibration, ("coffee", "camera")):
        folder.mkdir()
        shutil.copy(photo_files[photo], folder / "1.jpg")  # same names, other content
    int8 = Configuration("openvino", "int8")
    others = {
        column_directory(tmp_path, resolve("efficientnet_b0", lite0_weights), Configuration()),
        column_directory(tmp_path, lite0, Configuration("onnxruntime")),
        column_directory(tmp_path, lite0, Configuration("torch", "bf16")),
        column_directory(tmp_path, lite0, Configuration("openvino")),
        column_directory(tmp_path, lite0, Configuration("torch", "fp32", "cuda:0")),
        column_directory(tmp_path, lite0, int8, calibration_set(calibration[0])),
        column_directory(tmp_path, lite0, int8, calibration_set(calibration[1])),
    }
    assert base not in others and len(others) == 7
    assert column_directory(tmp_path, lite0, int8, calibration_set(calibration[0])) in others  # the same images
    # The calibration set keys int8 columns only: an fp32 column is the same folder beside any int8 one.
    assert column_directory(tmp_path, lite0, Configuration(), calibration_set(calibration[0])) == base
    with pytest.raises(ValueError, match="random weights"):  # never stored, so never keyed
        column_directory(tmp_path, resolve(MODEL, None), Configuration())


def test_each_column_is_stored_and_reused_on_its_own(annotated, lite0_weights, tmp_path):
    """Adding a column runs only that column; reordering the columns runs nothing (issue: the store was keyed by
    the whole column set, so either recomputed the reference column over the whole dataset)."""
    fp32, bf16 = (eval_engines(["torch"], [p], device="cpu")[0] for p in ("fp32", "bf16"))
    kwargs = dict(model=MODEL, weights=lite0_weights, batch_size=2, resume_dir=tmp_path / "runs")
    alone = evaluate(annotated, engines=[fp32], **kwargs)
    assert (alone.count, alone.evaluated_now, alone.configurations[0].computed) == (COUNT, COUNT, COUNT)
    reference = alone.results_file
    predictions = [line for line in reference.read_text().splitlines() if '"row"' in line]

    both = evaluate(annotated, engines=[fp32, bf16], **kwargs)
    ref, new = both.configurations
    assert (ref.computed, ref.reused, new.computed, new.reused) == (0, COUNT, COUNT, 0)  # only bf16 ran
    assert ref.results_file == reference and new.results_file.parent != reference.parent
    assert [line for line in reference.read_text().splitlines() if '"row"' in line] == predictions  # untouched
    assert (ref.top1, ref.top5) == (TOP1, TOP5) and both.evaluated_now == COUNT
    [agreement] = both.agreement
    assert 0.0 < agreement.max_abs_dprob < 0.1  # bf16 against fp32: close, not equal, from the stored vector
    assert "Stored results reused: torch fp32 5." in both.to_markdown()
    assert both.to_dict()["configurations"][0]["reused"] == COUNT

    swapped = evaluate(annotated, engines=[bf16, fp32], **kwargs)  # the other column as the reference
    assert swapped.evaluated_now == 0 and [c.computed for c in swapped.configurations] == [0, 0]
    [back] = swapped.agreement
    assert (back.top1, back.max_abs_dprob) == (agreement.top1, agreement.max_abs_dprob)
    # What a column costs per image: the float32 probabilities of the 1000 classes, and one short JSON line.
    assert reference.with_name("probs.f32").stat().st_size == COUNT * 4 * 1000
    assert max(len(line) for line in predictions) < 200


def test_unwritable_cache_keeps_eval_results_in_memory_with_one_line(annotated, lite0_weights, tmp_path, capsys,
                                                                     monkeypatch):
    from effnet.cli import main
    from effnet.errors import OutputError

    home = tmp_path / "home"
    home.write_text("EFFNET_HOME is a file, not a folder")
    monkeypatch.setenv("EFFNET_HOME", str(home))
    argv = ["eval", "--model", MODEL, "--weights", str(lite0_weights), "--backend", "torch", "--json", str(annotated)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["count"], out["top1"], out["top5"], out["results_file"]) == (COUNT, TOP1, TOP5, None)
    assert captured.err.splitlines() == [
        f"effnet: cannot keep eval results in {home / 'eval'} (not a directory); this run keeps them in memory "
        "only: give --resume-dir DIR to keep them elsewhere"]
    with pytest.raises(OutputError, match=r"cannot write to resume_dir=.*: not a directory; give a writable folder"):
        evaluate(annotated, model=MODEL, weights=lite0_weights, resume_dir=home / "runs")  # named: must work


# ---- results you can trust: the content of every image is part of the key ------------------------

def _variant(photo_arrays, name: str) -> np.ndarray:
    """A photo ("coffee"), mirrored ("coffee_mirror") or in grey ("coffee_grey"): distinct files, known answers."""
    photo, _, change = name.partition("_")
    array = photo_arrays[photo]
    if change == "mirror":
        return np.ascontiguousarray(array[:, ::-1])
    if change == "grey":
        return np.stack([np.asarray(Image.fromarray(array).convert("L"))] * 3, axis=-1)
    return array


# Folder A: Lite0's top-1 (measured once) for all but the astronaut, labelled tench: 9/10 top-1 and top-5.
FOLDER_A = {"coffee": 967, "coffee_mirror": 967, "coffee_grey": 967, "camera": 872, "camera_mirror": 872,
            "rocket": 657, "rocket_mirror": 657, "rocket_grey": 657, "astronaut_mirror": 560, "astronaut": 0}
# Folder B: three files replaced by cats, names and labels kept: two right answers become wrong -> 7/10.
REPLACED = {"coffee_grey": "chelsea", "camera_mirror": "chelsea_mirror", "astronaut": "chelsea_grey"}


def test_replaced_images_under_the_same_names_and_labels_are_recomputed(tmp_path, photo_arrays, lite0_weights):
    folder_a = tmp_path / "a"
    (folder_a / "imgs").mkdir(parents=True)
    for name in FOLDER_A:
        Image.fromarray(_variant(photo_arrays, name)).save(folder_a / "imgs" / f"{name}.JPEG", quality=95)
    (folder_a / "val.txt").write_text("".join(f"imgs/{name}.JPEG {label}\n" for name, label in FOLDER_A.items()))
    kwargs = dict(model=MODEL, weights=lite0_weights, batch_size=4, resume_dir=tmp_path / "runs")
    a = evaluate(folder_a, **kwargs)
    assert (a.count, a.top1, a.top5, a.evaluated_now) == (10, 90.0, 90.0, 10)

    folder_b = tmp_path / "b"
    shutil.copytree(folder_a, folder_b)
    for name, photo in REPLACED.items():
        Image.fromarray(_variant(photo_arrays, photo)).save(folder_b / "imgs" / f"{name}.JPEG", quality=95)
    assert load_dataset(folder_b).fingerprint() == load_dataset(folder_a).fingerprint()  # same names, labels
    lines_before = len(a.results_file.read_text().splitlines())
    b = evaluate(folder_b, **kwargs)
    assert b.results_file == a.results_file  # the same run folder, shared ...
    assert (b.count, b.top1, b.top5) == (10, 70.0, 70.0)  # ... but the true numbers, not A's 90 %
    assert b.evaluated_now == 3  # only the replaced images were computed again
    new = [json.loads(line) for line in a.results_file.read_text().splitlines()[lines_before:]]
    assert sorted(r["image"] for r in new) == sorted(f"imgs/{name}.JPEG" for name in REPLACED)
    for record in new:
        assert record["sha256"] == content_sha256((folder_b / record["image"]).read_bytes())

    again = evaluate(folder_a, **kwargs)  # A's records are still there, by content
    assert (again.top1, again.top5, again.evaluated_now) == (90.0, 90.0, 0)


def test_random_weights_are_never_stored_or_resumed(annotated, tmp_path, capsys):
    from effnet.cli import main

    argv = ["eval", "--model", MODEL, "--weights", "random", "--resume-dir", str(tmp_path / "runs"), "--json",
            str(annotated)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == COUNT and out["weights_sha256"] is None and out["results_file"] is None
    assert out["evaluated_now"] == COUNT and out["card"] is None
    assert not any((tmp_path / "runs").rglob("*"))  # nothing kept
    assert main(argv[:-2] + [str(annotated)]) == 0
    assert "random weights" in capsys.readouterr().out


# ---- --limit -------------------------------------------------------------------------------------

def test_limit_is_deterministic_and_stratified():
    samples = tuple(Sample(f"{c}/{i}.JPEG", Path(f"{c}/{i}.JPEG"), c) for c in range(10) for i in range(5))
    dataset = Dataset(Layout.WNID_FOLDERS, Path("."), Path("."), samples)
    twenty = dataset.subset(20)
    assert twenty == dataset.subset(20) and len(twenty) == 20
    assert np.bincount([s.label for s in twenty.samples]).tolist() == [2] * 10
    five = dataset.subset(5)  # fewer than the classes: spread over the label range, not the first five
    assert [s.label for s in five.samples] == [0, 2, 4, 6, 8]
    assert dataset.subset(None) is dataset and dataset.subset(500) is dataset
    with pytest.raises(DatasetError, match="positive"):
        dataset.subset(0)


def test_limit_in_evaluate(annotated, lite0_weights, tmp_path):
    result = evaluate(annotated, model=MODEL, weights=lite0_weights, limit=3, resume_dir=tmp_path)
    assert result.count + len(result.failed) == 3


# ---- comparing configurations --------------------------------------------------------------------

class UniformBackend:
    """A stand-in second engine with a known answer: every class 1/1000 (top-5 by index: 0..4)."""

    name, precision, device, torch_module = "uniform", "fp32", "cpu", None

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return np.full((len(crops), 1000), 1e-3, np.float32)


def test_configurations_run_in_lockstep_with_agreement(annotated, classifier, lite0_weights, tmp_path):
    both = run_with(load_dataset(annotated), classifier, tmp_path, [UniformBackend()])
    records = list(both.run())
    result = both.result()
    torch_cfg, uniform = result.configurations
    assert (torch_cfg.count, torch_cfg.top1, torch_cfg.top5) == (COUNT, TOP1, TOP5)
    assert (uniform.top1_correct, uniform.top5_correct) == (1, 1)  # only astronaut's label 0 is in 0..4
    [agreement] = result.agreement
    assert agreement.top1 == 0.0 and agreement.reference == Configuration("torch", "fp32")
    # max |dprob| is the largest probability the real model gave (coffee's espresso) minus 1/1000.
    best = max(r["prob5"][0][0] for r in records if "prob5" in r)
    assert agreement.max_abs_dprob == pytest.approx(best - 1e-3, abs=1e-5)
    table = result.to_markdown()
    assert "| torch fp32" in table and "uniform fp32" in table and "top-1 agreement with torch fp32" in table
    assert result.to_dict()["agreement"][0]["top1_agreement"] == 0.0


def test_torch_and_onnxruntime_agree_on_the_photos(annotated, lite0_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNET_HOME", str(tmp_path / "home"))  # the exported ONNX file goes here
    engines = eval_engines(["torch", "onnxruntime"], ["fp32"], device="cpu")
    result = evaluate(annotated, model=MODEL, weights=lite0_weights, engines=engines, resume_dir=tmp_path / "runs")
    assert [(c.count, c.top1, c.top5) for c in result.configurations] == [(COUNT, TOP1, TOP5)] * 2
    [agreement] = result.agreement
    assert agreement.top1 == 100.0 and agreement.max_abs_dprob < 1e-4
    folders = [c.results_file.parent.name for c in result.configurations]  # a folder per column
    assert folders[0].startswith("efficientnet_lite0-torch-fp32-") and folders[1].startswith(
        "efficientnet_lite0-onnxruntime-fp32-")


def test_configurations_are_backend_by_precision_pairs_an_engine_runs(photo_files):
    photos = photo_files["coffee"].parent
    engines = eval_engines(["torch", "openvino"], ["fp32", "int8"], device="cpu", calibration=photos)
    assert [(e.backend, e.precision) for e in engines] == [("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")]
    assert engines[2].calibration is not None and engines[0].calibration is None  # only int8 holds the photos
    with pytest.raises(EffnetError, match="unknown backend=onnx"):
        eval_engines(["torch", "onnx"], ["fp32"], device="cpu")
    with pytest.raises(EffnetError, match="onnxruntime backend runs fp32 on cpu, not precision=int8"):
        eval_engines(["onnxruntime"], ["int8"], device="cpu")


def test_the_card_values_stand_beside_the_cards_own_weights_only(annotated, classifier):
    from dataclasses import replace

    result = run_with(load_dataset(annotated), classifier).result()
    assert "| n/a" in result.to_markdown()
    random_b7 = resolve("efficientnet_b7", None)
    official = replace(random_b7, weights_file=Path("tf_efficientnet_b7_aa-076e3472.pth"),
                       weights_sha256=random_b7.entry.sha256)  # the card's file, by its published sha256
    b7 = replace(result, model=official)
    assert b7.card == (84.42, 96.91) and "84.42" in b7.to_markdown() and b7.to_dict()["card"]["top5"] == 96.91
    assert replace(result, model=random_b7).card is None  # other weights: the card's figures do not apply


# ---- user mistakes: clear errors before any inference ----------------------------------------

@pytest.mark.parametrize("line, message", [
    ("imgs/coffee.JPEG", r"val.txt:2: expected '<relative path> <class index>'"),
    ("imgs/coffee.JPEG espresso", r"val.txt:2: expected"),
    ("imgs/coffee.JPEG 1000", r"val.txt:2: class index 1000 is outside 0..999"),
    ("imgs/missing.JPEG 5", r"1 of 2 images listed in .*val.txt are missing .*imgs/missing.JPEG"),
    ("imgs/camera.JPEG 1", r"listed more than once: imgs/camera.JPEG"),
])
def test_bad_annotation_lines(annotated, line, message):
    (annotated / "val.txt").write_text(f"imgs/camera.JPEG 872\n{line}\n")
    with pytest.raises(DatasetError, match=message):
        load_dataset(annotated)


def test_unknown_wnids(tmp_path, photo_files):
    folders = make_wnid_folders(tmp_path / "folders", photo_files)
    (folders / "n99999999").mkdir()
    (folders / "cats").mkdir()
    with pytest.raises(DatasetError, match=r"2 sub-folder\(s\) are not ImageNet-1k WordNet IDs: cats, n99999999"):
        load_dataset(folders)

    csv_root = make_loc_csv(tmp_path / "csv", photo_files)
    text = (csv_root / "LOC_val_solution.csv").read_text().splitlines()
    text[2] = "ILSVRC2012_val_00000002,n12345678 1 2 3 4"
    (csv_root / "LOC_val_solution.csv").write_text("\n".join(text))
    with pytest.raises(DatasetError, match=r"LOC_val_solution.csv:3: unknown WordNet ID 'n12345678'"):
        load_dataset(csv_root)


def test_missing_data_and_empty_folders(tmp_path, photo_files):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no val.txt, no LOC_val_solution.csv and no WordNet-ID sub-folders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="not a text file"):
        load_dataset(tmp_path / "binary.txt")
    csv_root = make_loc_csv(tmp_path / "csv", photo_files)
    (csv_root / "ILSVRC2012_val_00000004.JPEG").unlink()
    with pytest.raises(DatasetError, match="1 of 6 images .* missing .*ILSVRC2012_val_00000004.JPEG"):
        load_dataset(csv_root)


# ---- the command ---------------------------------------------------------------------------------

def test_cli_json_and_report(annotated, lite0_weights, tmp_path, capsys):
    from effnet.cli import main

    report = tmp_path / "report.md"
    argv = ["eval", "--model", MODEL, "--weights", str(lite0_weights), "--resume-dir", str(tmp_path / "runs"),
            "--batch-size", "2", "--json", "--report", str(report), str(annotated)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["count"], out["top1"], out["top5"]) == (COUNT, TOP1, TOP5)
    assert out["configurations"][0]["backend"] == "torch" and out["card"] is None
    assert "| top-1 %" in report.read_text() and "40.00 [11.76, 76.93]" in report.read_text()
    weights = resolve(MODEL, lite0_weights).weights_sha256
    assert out["model"] == MODEL and out["weights_sha256"] == weights
    heading = report.read_text().splitlines()[0]
    assert f"**{MODEL}**, weights sha256 {weights[:16]}," in heading and "(engine precision): torch fp32" in heading

    assert main(argv[:-4] + [str(annotated)]) == 0  # resumed: same table, nothing re-run
    text = capsys.readouterr().out
    assert "| top-5 %" in text and "80.00" in text and "0 evaluated in this run" in text
    assert "1 unreadable image(s) excluded" in text


def test_cli_user_mistakes_exit_cleanly(tmp_path, capsys):
    from effnet.cli import main

    assert main(["eval", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("effnet: error:") and "does not exist" in err and "Traceback" not in err
    assert main(["eval", "--precision", "int8", "--backend", "onnxruntime", str(tmp_path / "nowhere")]) == 2  # usage
    err = capsys.readouterr().err  # the engine is checked before the data is even looked at
    assert err.startswith("effnet: error:") and "not --precision int8" in err and "does not exist" not in err
    for bad in (["--backend", "onnx"], ["--precision", "fp64"], ["--limit", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", *bad, str(tmp_path)])
        assert exit_info.value.code == 2


def test_cli_report_write_failure_is_one_line(annotated, lite0_weights, tmp_path, capsys):
    from effnet.cli import main

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    argv = ["eval", "--model", MODEL, "--weights", str(lite0_weights), "--resume-dir", str(tmp_path / "runs"),
            "--report", "/dev/full", str(annotated)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("effnet: error: cannot write the report /dev/full") and err.count("\n") == 1


def test_every_eval_option_has_help():
    from effnet.cli import build_parser

    parser = build_parser()
    [eval_parser] = [p for a in parser._subparsers._group_actions for n, p in a.choices.items() if n == "eval"]
    assert all(action.help for action in eval_parser._actions)
