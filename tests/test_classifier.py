"""Classifier end to end with real weights and real photos, including a batch with broken files."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from effnet import Classifier, ImageError, Prediction

from helpers import make_bad_files


@pytest.fixture(scope="module")
def classifier(lite0_weights):
    return Classifier("efficientnet_lite0", lite0_weights, batch_size=2)


def test_classify_real_photos(classifier, photo_files):
    results = classifier.classify([photo_files["coffee"], photo_files["camera"]], top=5)
    assert [r[0].index for r in results] == [967, 872]
    assert results[0][0] == Prediction(967, "espresso", pytest.approx(results[0][0].probability))
    assert results[1][0].label == "tripod"
    for preds in results:
        probs = [p.probability for p in preds]
        assert len(preds) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_every_input_form_gives_the_same_answer(classifier, photo_files):
    path = photo_files["coffee"]
    data = path.read_bytes()
    forms = [path, str(path), data, Image.open(io.BytesIO(data)), np.asarray(Image.open(path).convert("RGB"))]
    results = classifier.classify(forms, top=3)
    for preds in results:  # batches of different sizes may differ in the last float bits
        assert [p.index for p in preds] == [p.index for p in results[0]]
        assert [p.probability for p in preds] == pytest.approx([p.probability for p in results[0]], rel=1e-5)
    single = classifier.classify(path, top=1)  # a single image is a batch of one
    assert len(single) == 1 and single[0][0].index == results[0][0].index


def test_probabilities_sum_to_one(classifier, photo_files):
    probs = classifier.probabilities([photo_files["chelsea"]])
    assert probs.shape == (1, 1000) and probs.dtype == np.float32
    assert abs(float(probs.sum()) - 1.0) < 1e-4 and (probs >= 0).all()


def test_bad_image_raises_one_clear_error(classifier, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ImageError, match="bad.jpg"):
        classifier.classify([bad])


@pytest.mark.parametrize("kind", ["openvino", "torch", "onnxruntime"])
def test_broken_files_in_a_batch_are_reported_and_the_rest_classified(kind, lite0_weights, photo_files, tmp_path):
    classifier = Classifier("efficientnet_lite0", lite0_weights, backend=kind, batch_size=2)
    bad = make_bad_files(tmp_path / "bad", photo_files["coffee"])
    good = {name: tmp_path / f"{name}.jpg" for name in ("coffee", "camera", "rocket")}
    for name, path in good.items():
        shutil.copy(photo_files[name], path)
    # In batches of 2 the third holds no readable image at all.
    sources = [good["coffee"], bad["empty"], bad["truncated"], good["camera"], bad["text"], bad["bomb"],
               tmp_path / "missing.jpg", good["rocket"]]
    outcomes = list(classifier.classify_iter(sources, top=5))
    assert [o.source for o in outcomes] == [str(s) for s in sources]  # in order, nothing lost
    errors = {o.source: o.error for o in outcomes if o.error}
    assert set(errors) == {str(bad[k]) for k in bad} | {str(tmp_path / "missing.jpg")}
    for source, message in errors.items():
        assert source in message and "\n" not in message
    assert "bomb" in errors[str(bad["bomb"])].lower() or "pixels" in errors[str(bad["bomb"])]
    tops = {o.source: o.predictions[0].index for o in outcomes if o.predictions}
    assert tops[str(good["coffee"])] == 967 and tops[str(good["camera"])] == 872
    assert 657 in [p.index for p in outcomes[-1].predictions]  # the rocket: missile


def test_default_engine_is_the_fastest_installed(classifier):
    from effnet.engines import default_precision

    assert classifier.backend.name == "openvino"  # installed with effnet[all], on a machine without a GPU
    assert classifier.backend.precision == default_precision("openvino")


@pytest.mark.parametrize("backend, precision", [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"),
                                                ("openvino", "fp32")])
def test_every_engine_classifies_the_photos(lite0_weights, photo_files, backend, precision):
    clf = Classifier("efficientnet_lite0", lite0_weights, backend=backend, precision=precision)
    assert clf.backend.name == backend and clf.backend.precision == precision
    results = clf.classify([photo_files["coffee"], photo_files["camera"]], top=1)
    assert [r[0].index for r in results] == [967, 872]


def test_decode_batches_streams_any_items_in_order_with_bounded_read_ahead(classifier, photo_files, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    items = [("coffee", photo_files["coffee"]), ("bad", bad), ("camera", photo_files["camera"])] * 4
    taken = []

    def stream():
        for item in items:
            taken.append(item)
            yield item

    decoder = classifier.decoder
    batches = decoder.batches(stream(), classifier.batch_size, source=lambda item: item[1])  # items of any kind
    first = next(batches)
    assert len(taken) <= 2 * classifier.batch_size + decoder.workers + 1  # not the whole stream
    decoded = [*first, *(d for batch in batches for d in batch)]
    assert len(first) == classifier.batch_size and [d.item for d in decoded] == items
    size = decoder.input_size
    for d in decoded:
        if d.item[0] == "bad":
            assert d.crop is None and "bad.jpg" in d.error and "\n" not in d.error
        else:
            assert d.error is None and d.crop.shape == (size, size, 3) and d.crop.dtype == np.uint8
            assert np.array_equal(d.crop, decoder.crop(d.item[1]))  # the same crop classify() sees
