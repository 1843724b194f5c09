"""Captions for image datasets: from class names through templates, or read beside the images.

No captioned image set exists offline, so a built-in dataset's caption comes from its class name:
sample i gets one of several templates of its source (``"a handwritten digit seven"``,
``"a silhouette of a giraffe"``, ``"a photo of an ankle boot"``), chosen by a seeded hash of its
global id, so a sample's caption is the same alone, in any union and in any subset.

An ``imagefolder:ROOT`` source may caption its images itself; for each image file, in order:
1. ``ROOT/<class>/.../name.txt`` beside ``name.png``: its stripped text;
2. a line ``{"file": "<class>/.../name.png", "caption": "..."}`` of ``ROOT/captions.jsonl``;
3. else a generic class template (``"a picture of a <class>"``).

A shard source (``wds:``, ``parquet:``, ``hf:``) brings its own captions: each sample's
``.txt`` member (or its ``.json`` ``"caption"``, or the row's caption column) is its caption.

Captions are returned as ``Captions(texts, index)``: the distinct caption strings and, per sample,
an index into them. There are only about classes x templates distinct captions, so text
embeddings are computed once per distinct string (``hetdiff.models.text.CaptionBank``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hetdiff.data.datasets import IMAGEFOLDER_PREFIX, ImageDataset
from hetdiff.data.imagefolder import list_image_files
from hetdiff.data.shards import is_shard_spec, iter_shard, parse_shard_spec
from hetdiff.data.sources import IMAGEFOLDER_ID_BASE, IMAGEFOLDER_ID_STRIDE
from hetdiff.errors import HetdiffError

MANIFEST_NAME = "captions.jsonl"

# Templates per source; "{a}" is the article ("a" / "an") of the class name that follows it.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "digits": (
        "a handwritten digit {name}",
        "the number {name} written by hand",
        "a scanned digit {name}",
        "a black and white digit {name}",
    ),
    "animals": (
        "a silhouette of {a} {name}",
        "a black silhouette of {a} {name}",
        "an outline of {a} {name}",
        "the shape of {a} {name}",
    ),
    "fashion": (
        "a photo of {a} {name}",
        "a grayscale photo of {a} {name}",
        "a product picture of {a} {name}",
        "a small image of {a} {name}",
    ),
    "generic": ("a picture of {a} {name}", "an image of {a} {name}", "a photo of {a} {name}"),
}
SOURCE_TEMPLATES = {
    "mnist5k": "digits",
    "digits": "digits",
    "animal-mnist": "animals",
    "fashion-mnist": "fashion",
}


@dataclass(frozen=True, eq=False)
class Captions:
    """Captions of a dataset.

    texts: the distinct caption strings, sorted.
    index: (N,) int64, ``texts[index[i]]`` is the caption of sample i (dataset row order).
    """

    texts: tuple[str, ...]
    index: Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def caption(self, row: int) -> str:
        """The caption of sample ``row``."""
        return self.texts[int(self.index[row])]


def _article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


def class_captions(class_name: str) -> tuple[str, ...]:
    """Every template caption of a global class name ``"<source>/<class>"`` (or a bare name)."""
    source, _, name = class_name.rpartition("/")
    if is_shard_spec(source):  # "wds:DIR/mnist5k/seven" (exported): the class's own source
        source = source.rpartition("/")[2]
    if source.startswith(IMAGEFOLDER_PREFIX) or source not in SOURCE_TEMPLATES:
        family = "generic"
    else:
        family = SOURCE_TEMPLATES[source]
    name = name.replace("_", " ").strip()
    return tuple(t.format(a=_article(name), name=name) for t in TEMPLATES[family])


def default_prompts(class_names: tuple[str, ...] | list[str], limit: int = 8) -> list[str]:
    """One prompt per class (the first template of ``class_captions``), for at most ``limit``
    classes spread evenly over the class list, so a union shows every source."""
    if not class_names:
        raise HetdiffError("the data has no class names to make prompts from; give prompts")
    count = min(limit, len(class_names))
    picks = sorted({round(i * (len(class_names) - 1) / max(1, count - 1)) for i in range(count)})
    return [class_captions(class_names[i])[0] for i in picks]


def template_choice(ids: Tensor | np.ndarray, num_templates: int, seed: int = 0) -> np.ndarray:
    """(N,) int64 template index per global id: splitmix64(id, seed) mod ``num_templates``."""
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = np.asarray(ids, dtype=np.int64).astype(np.uint64) + np.uint64(seed) * np.uint64(
            0x9E3779B97F4A7C15
        )
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & mask
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & mask
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & mask
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(num_templates)).astype(np.int64)


def _folder_captions(source: str, base: int, ids: np.ndarray) -> dict[int, str]:
    """Explicit captions of an image folder's samples among ``ids``: {global id: caption}."""
    root = Path(source[len(IMAGEFOLDER_PREFIX) :]).expanduser()
    _, files = list_image_files(root)
    by_relpath = {path.relative_to(root).as_posix(): i for i, (path, _) in enumerate(files)}
    found: dict[int, str] = {}
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                file, text = entry["file"], entry["caption"]
            except (ValueError, KeyError, TypeError) as err:
                raise HetdiffError(
                    f"{manifest}:{number} is not a JSON line with 'file' and 'caption' ({err}); "
                    'write {"file": "<class>/<name>.png", "caption": "..."}'
                ) from err
            if file not in by_relpath:
                raise HetdiffError(
                    f"{manifest}:{number} names {file!r}, which is not an image of {root}; "
                    "give paths relative to the folder"
                )
            found[base + by_relpath[file]] = str(text).strip()
    wanted = set(int(i) for i in ids)
    for local, (path, _) in enumerate(files):
        text_file = path.with_suffix(".txt")
        if base + local in wanted and text_file.is_file():
            found[base + local] = text_file.read_text(encoding="utf-8").strip()
    return found


def _shard_captions(spec: str, base: int, ids: np.ndarray) -> dict[int, str]:
    """The captions stored in the shards of ``spec`` for the samples among ``ids``: {global
    id: caption}; a sample's local id is its position in shard order (as ``load_dataset``)."""
    shard_set = parse_shard_spec(spec)
    wanted = set(int(i) for i in ids)
    found: dict[int, str] = {}
    position = 0
    for shard in shard_set.shards:
        for sample in iter_shard(shard_set, shard):
            if base + position in wanted:
                found[base + position] = sample.caption
            position += 1
    return found


def dataset_captions(dataset: ImageDataset, seed: int = 0) -> Captions:
    """One caption per sample of ``dataset`` (see the module docstring); deterministic."""
    ids = dataset.ids.numpy()
    labels = dataset.labels.numpy()
    per_class = [class_captions(name) for name in dataset.class_names]
    texts: list[str] = [""] * len(ids)
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        options = per_class[int(cls)]
        for row, choice in zip(rows, template_choice(ids[rows], len(options), seed), strict=True):
            texts[row] = options[choice]
    count = 0  # image folders and shard sources share the id ranges, in spec order
    for index, source in enumerate(dataset.source_names):
        folder = source.startswith(IMAGEFOLDER_PREFIX)
        if not (folder or is_shard_spec(source)):
            continue
        base = IMAGEFOLDER_ID_BASE + count * IMAGEFOLDER_ID_STRIDE
        count += 1
        rows = np.flatnonzero(dataset.sources.numpy() == index)
        read = _folder_captions if folder else _shard_captions
        explicit = read(source, base, ids[rows])
        for row in rows:
            text = explicit.get(int(ids[row]))
            if text:
                texts[row] = text
    distinct = tuple(sorted(set(texts)))
    lookup = {text: i for i, text in enumerate(distinct)}
    index = torch.tensor([lookup[text] for text in texts], dtype=torch.int64)
    return Captions(texts=distinct, index=index)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file, one a line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise HetdiffError(
            f"prompts file {path} does not exist; give a text file, one prompt a line"
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def check_prompts(prompts: list[str] | tuple[str, ...]) -> list[str]:
    """Stripped prompts; an empty list or an empty prompt is a one-line error."""
    prompts = [str(p).strip() for p in prompts]
    if not prompts:
        raise HetdiffError("no prompts given; pass --prompt TEXT (repeatable) or --prompts FILE")
    if not all(prompts):
        raise HetdiffError("a prompt is empty; give each --prompt some text")
    return prompts
