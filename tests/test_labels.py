"""ImageNet-1k class table: standard order, well-known indices, lookups."""
from __future__ import annotations

import re

from effnet.labels import imagenet_full_names, imagenet_labels, imagenet_wnids, wnid_to_index


def test_thousand_unique_sorted_wnids():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000
    assert len(set(wnids)) == 1000
    assert list(wnids) == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in wnids)


def test_well_known_indices():
    wnids, labels, names = imagenet_wnids(), imagenet_labels(), imagenet_full_names()
    assert (wnids[0], labels[0], names[0]) == ("n01440764", "tench", "tench, Tinca tinca")
    assert labels[1] == "goldfish"
    assert labels[207] == "golden retriever"
    assert (wnids[872], labels[872]) == ("n04485082", "tripod")
    assert (wnids[967], labels[967]) == ("n07920052", "espresso")
    assert (wnids[999], labels[999]) == ("n15075141", "toilet tissue")
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"


def test_short_names_are_first_synonym():
    for label, name in zip(imagenet_labels(), imagenet_full_names()):
        assert label and name.startswith(label)
        assert "," not in label and label == label.strip()
    # Short names are not unique: two pairs of classes share their first synonym. The bird and the
    # machine called "crane" even share the full text, so only the WNID tells them apart.
    labels, names, wnids = imagenet_labels(), imagenet_full_names(), imagenet_wnids()
    assert labels[638] == labels[639] == "maillot" and names[638] != names[639]
    assert names[134] == names[517] == "crane"
    assert (wnids[134], wnids[517]) == ("n02012849", "n03126707")
    assert len(set(labels)) == 998 and len(set(names)) == 999


def test_wnid_to_index_round_trip():
    mapping = wnid_to_index()
    assert len(mapping) == 1000
    wnids = imagenet_wnids()
    assert all(wnids[index] == wnid for wnid, index in mapping.items())
    assert mapping["n07920052"] == 967
    mapping["n07920052"] = -1  # callers get their own copy
    assert wnid_to_index()["n07920052"] == 967


def test_cached_tuples():
    assert imagenet_labels() is imagenet_labels()
    assert isinstance(imagenet_wnids(), tuple) and isinstance(imagenet_full_names(), tuple)
