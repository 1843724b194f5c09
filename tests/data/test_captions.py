"""Captions from class names, from .txt files beside images, and from a captions.jsonl manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hetdiff.data.captions import (
    check_prompts,
    class_captions,
    dataset_captions,
    default_prompts,
    read_prompts,
    template_choice,
)
from hetdiff.data.datasets import load_dataset
from hetdiff.errors import HetdiffError


def test_class_captions_use_the_source_templates_and_articles() -> None:
    assert "a handwritten digit seven" in class_captions("mnist5k/seven")
    assert "a silhouette of a giraffe" in class_captions("animal-mnist/giraffe")
    assert "a silhouette of an elephant" in class_captions("animal-mnist/elephant")
    assert "a photo of an ankle boot" in class_captions("fashion-mnist/ankle boot")
    assert "a picture of a red car" in class_captions("imagefolder:/x/red_car")
    assert all("giraffe" in c for c in class_captions("animal-mnist/giraffe"))


def test_template_choice_is_deterministic_spread_and_seeded() -> None:
    ids = np.arange(4000)
    choice = template_choice(ids, 4, seed=0)
    assert np.array_equal(choice, template_choice(ids, 4, seed=0))
    counts = np.bincount(choice, minlength=4)
    assert counts.min() > 850  # about 1000 each
    assert (choice != template_choice(ids, 4, seed=1)).mean() > 0.5


def test_dataset_captions_name_the_class_and_survive_subsets() -> None:
    data = load_dataset("digits")
    captions = dataset_captions(data)
    assert len(captions) == len(data)
    for row in range(0, len(data), 97):
        name = data.class_names[int(data.labels[row])].split("/")[-1]
        assert name in captions.caption(row).split()
    assert len(captions.texts) == 10 * 4  # every template of every class is used
    sub_ids = data.ids[[5, 900, 17]]
    sub = dataset_captions(data.subset(sub_ids))
    assert [sub.caption(i) for i in range(3)] == [captions.caption(r) for r in (5, 900, 17)]


def _folder(root: Path) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 6), 40 * i + 9, dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )


def test_imagefolder_reads_txt_beside_images_and_a_manifest(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "cat" / "0.txt").write_text("  a sleepy tabby cat \n")
    manifest = [{"file": "dog/1.png", "caption": "a dog catching a frisbee"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(m) for m in manifest))
    data = load_dataset(f"imagefolder:{tmp_path}")
    captions = dataset_captions(data)
    got = [captions.caption(i) for i in range(len(data))]
    assert got[0] == "a sleepy tabby cat"
    assert got[3] == "a dog catching a frisbee"
    assert "cat" in got[1] and "dog" in got[2]  # class templates for the rest
    assert captions.index.dtype == torch.int64


def test_a_bad_manifest_line_is_a_one_line_error(tmp_path: Path) -> None:
    _folder(tmp_path)
    (tmp_path / "captions.jsonl").write_text('{"file": "cat/9.png", "caption": "x"}\n')
    with pytest.raises(HetdiffError, match="not an image of") as err:
        dataset_captions(load_dataset(f"imagefolder:{tmp_path}"))
    assert "\n" not in str(err.value)


def test_prompts_file_and_empty_prompt_lists(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a silhouette of a horse\n\n# comment\n a handwritten digit one \n")
    assert read_prompts(path) == ["a silhouette of a horse", "a handwritten digit one"]
    with pytest.raises(HetdiffError, match="no prompts"):
        check_prompts([])
    with pytest.raises(HetdiffError, match="empty"):
        check_prompts(["a cat", "  "])
    with pytest.raises(HetdiffError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_default_prompts_spread_over_the_classes() -> None:
    names = [f"mnist5k/{n}" for n in ("zero", "one", "two")]
    assert default_prompts(names) == [
        "a handwritten digit zero", "a handwritten digit one", "a handwritten digit two"
    ]  # fmt: skip
    union = names * 3 + [f"animal-mnist/a{i}" for i in range(11)]  # 20 classes
    prompts = default_prompts(union)
    assert len(prompts) == 8 and prompts[0] == "a handwritten digit zero"
    assert prompts[-1] == "a silhouette of an a10"  # the last class is always shown


def _captioned_shards(root: Path, fmt: str) -> list[str]:
    """12 gray 6x6 images with their own captions ("shard caption 0", ...), 4 per shard."""
    from hetdiff.data.export import ShardSetWriter, png_bytes
    from hetdiff.data.shards import ShardSample

    writer = ShardSetWriter(str(root), 4, fmt)
    captions = []
    for i in range(12):
        pixels = np.full((1, 6, 6), 20 * i, dtype=np.uint8)
        captions.append(f"shard caption {i}")
        meta = {"class": "odd" if i % 2 else "even"}
        writer.write(ShardSample(f"k/{i:03d}", png_bytes(pixels), "png", captions[-1], meta))
    writer.close()
    return captions


@pytest.mark.parametrize("fmt", ["wds", "parquet"])
def test_shard_sources_caption_with_their_own_captions(tmp_path: Path, fmt: str) -> None:
    captions = _captioned_shards(tmp_path / fmt, fmt)
    spec = f"wds:{tmp_path / fmt}" if fmt == "wds" else f"parquet:{tmp_path / fmt}"
    for dataset in (load_dataset(spec), load_dataset(f"digits+{spec}")):
        got = dataset_captions(dataset)
        rows = np.flatnonzero(dataset.sources.numpy() == dataset.source_names.index(spec))
        assert [got.caption(int(r)) for r in rows] == captions  # not class templates
        half = dataset.subset(dataset.ids[rows[::2]])
        assert [dataset_captions(half).caption(i) for i in range(6)] == captions[::2]
