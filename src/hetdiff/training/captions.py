"""The caption bank of a training data set: each image's caption, embedded once.

Experts and text routers train on ``(bank, caption_ids)``: ``caption_ids`` (N,) int64 is a
column of the training data (row i's caption is ``bank.texts[caption_ids[i]]``), and the loss
turns a batch of ids into a ``Conditioning`` with ``bank.conditioning(ids)`` (-1 = the null
context of a dropped caption). Captions come from ``hetdiff.data.captions.dataset_captions``;
their embeddings from ``hetdiff.models.text.caption_bank`` (cached under ``cache_dir/text``).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from hetdiff.data.captions import dataset_captions
from hetdiff.data.datasets import ImageDataset
from hetdiff.models.text import CaptionBank, caption_bank, load_text_encoder


def dataset_caption_bank(
    dataset: ImageDataset,
    text_encoder_name: str,
    caption_seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[CaptionBank, Tensor]:
    """The caption bank of ``dataset``'s captions under one encoder, and each sample's caption id.

    ``text_encoder_name``: "hash", "minilm" or a transformers folder. ``caption_seed`` picks
    each sample's caption template (``dataset_captions(dataset, caption_seed)``). Returns (bank
    of the U distinct captions, caption ids (N,) int64 into ``bank.texts`` in dataset row order).
    """
    captions = dataset_captions(dataset, seed=caption_seed)
    bank = caption_bank(load_text_encoder(text_encoder_name), captions.texts, cache_dir)
    return bank, captions.index
