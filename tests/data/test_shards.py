"""Shard sources: built-in data exported to 8 tar shards and to parquet reads back exactly;
stable keys; one-line errors for bad shards (corrupt image, no caption, truncated tar, a shard
listed twice, a shard that disappeared)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest

from hetdiff.data.datasets import load_dataset
from hetdiff.data.export import export_dataset, shard_pattern
from hetdiff.data.shard_dataset import shard_keys
from hetdiff.data.shards import iter_shard, parse_shard_spec
from hetdiff.errors import HetdiffError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    index = export_dataset("digits", str(root / "wds"), shards=8, fmt="wds")
    export_dataset("digits", str(root / "pq"), shards=8, fmt="parquet")
    return root, index


def test_export_to_8_tar_shards_reads_back_the_data_set(exported) -> None:
    root, index = exported
    original = load_dataset("digits")
    assert len(index["shards"]) == 8 and index["total"] == len(original) == 1797
    for name, digest in zip(index["shards"], index["digests"], strict=True):
        assert hashlib.sha256((root / "wds" / name).read_bytes()).hexdigest() == digest
    for spec in (shard_pattern(str(root / "wds"), index), f"wds:{root / 'wds'}"):
        back = load_dataset(spec)
        assert len(back) == len(original)
        assert (back.labels == original.labels).all()
        # digits have 17 levels; PNG stores round(p * 255 / 16): back within half a step of 255
        assert float((back.images - original.images).abs().max()) <= 1.0 / 255 + 1e-6
        assert [n.split("/")[-1] for n in back.class_names] == [
            n.split("/")[-1] for n in original.class_names
        ]


def test_parquet_export_equals_tar_export(exported) -> None:
    root, _ = exported
    tar = load_dataset(f"wds:{root / 'wds'}")
    parquet = load_dataset(f"parquet:{root / 'pq'}")
    assert (tar.images == parquet.images).all() and (tar.labels == parquet.labels).all()
    assert shard_keys(f"wds:{root / 'wds'}") == shard_keys(f"parquet:{root / 'pq'}")


def test_hf_datasets_folder_reads_like_parquet(exported, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    root, _ = exported
    table = datasets.load_dataset("parquet", data_files=str(root / "pq" / "00000.parquet"))
    table["train"].save_to_disk(str(tmp_path / "hf"))
    hf = load_dataset(f"hf:{tmp_path / 'hf'}")
    first = load_dataset(f"parquet:{root / 'pq' / '00000.parquet'}")
    assert (hf.images == first.images).all() and len(hf) == 225


def test_keys_are_stable_and_unique(exported) -> None:
    root, _ = exported
    keys = shard_keys(f"wds:{root / 'wds'}")
    assert len(set(keys)) == len(keys) == 1797
    assert keys[0] == "00000/data__0003000000" and keys == shard_keys(f"wds:{root / 'wds'}")


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png() -> bytes:
    from hetdiff.data.export import png_bytes

    return png_bytes(np.zeros((1, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize(
    "members, message",
    [
        ({"a.png": b"not a png", "a.txt": b"cap"}, "bad/a: corrupt image"),
        ({"a.png": _png()}, "key bad/a has no caption"),
        ({"a.txt": b"cap"}, "key bad/a has no image member"),
    ],
)
def test_bad_members_name_shard_and_key(tmp_path, members, message) -> None:
    _tar(tmp_path / "bad.tar", members)
    with pytest.raises(HetdiffError, match=message):
        load_dataset(f"wds:{tmp_path / 'bad.tar'}")


def test_truncated_tar_names_the_shard(exported, tmp_path) -> None:
    root, _ = exported
    data = (root / "wds" / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2 + 100])
    shard_set = parse_shard_spec(f"wds:{tmp_path / '00000.tar'}")
    with pytest.raises(HetdiffError, match=r"00000.tar is truncated .* after key 00000/"):
        list(iter_shard(shard_set, shard_set.shards[0]))


def test_shard_listed_twice_or_missing(exported) -> None:
    root, _ = exported
    with pytest.raises(HetdiffError, match="00001.tar is listed twice"):
        parse_shard_spec(f"wds:{root}/wds/{{00000..00001}}.tar::{root}/wds/00001.tar")
    with pytest.raises(HetdiffError, match=r"shard .*00008.tar cannot be opened"):
        load_dataset(f"wds:{root}/wds/{{00007..00009}}.tar")
    index = json.loads((root / "wds" / "index.json").read_text())
    assert index["counts"] == [225] * 7 + [222]
