"""An expert trained from a shard list read as a stream (``train-expert --data wds:... --stream``).

``StreamBatches`` turns a ``hetdiff.data.shard_stream.ShardStream`` into the loop's
``BatchStream``: each optimizer step takes the next B samples, decoded to the expert's
resolution, with their targets: none (unconditional), class ids (class-conditional), or the
batch's captions (text-conditioned: ids 0..B-1 into a caption bank of this batch's captions,
embedded by the expert's text encoder, so no bank of every caption is ever built). The loop
saves the stream's position (shard, member offset, shuffle buffer keys, generator state) with
each training state, so a killed expert resumes at the same sample, bitwise.

Every process of a multi-process run reads the same stream and takes its rows of each global
batch, as with in-memory data, but decodes (and embeds the captions of) only those rows: each
of w ranks decodes 1/w of the batch. Memory holds the shuffle buffer (encoded samples) and one
batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hetdiff.config import ExpertSettings
from hetdiff.config.shards import StreamSettings
from hetdiff.data.shard_stream import ShardStream
from hetdiff.errors import HetdiffError
from hetdiff.training.batches import Targets

TARGETS = ("none", "class", "caption")


class StreamBatches:
    """The loop's ``BatchStream`` over ``stream``; ``targets`` is one of ``TARGETS``;
    ``text_encoder`` (a ``hetdiff.models.text.TextEncoder``) is needed for ``caption``. After
    ``next_batch``, ``bank`` holds the batch's caption bank (caption targets only).

    ``workers`` > 0: a pool of that many threads decodes each batch's samples in parallel and
    the next batch ahead, while the caller trains on this one (Pillow's decoders and torch's
    resize release the GIL). Samples are drawn in order on the calling thread and decoding is a
    pure function of the sample, so the batches are bitwise those of ``workers=0``; the saved
    position is the one after the last batch handed out, not after the one decoded ahead.
    ``close()`` drops the pool."""

    def __init__(
        self, stream: ShardStream, targets: str = "none", text_encoder: Any = None,
        workers: int = 0,
    ):  # fmt: skip
        if targets not in TARGETS:
            raise HetdiffError(f"stream targets {targets!r} must be one of {', '.join(TARGETS)}")
        if targets == "caption" and text_encoder is None:
            raise HetdiffError("caption targets need a text encoder")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise HetdiffError(f"decode workers must be an integer >= 0, got {workers!r}")
        self.stream, self.targets, self.text_encoder = stream, targets, text_encoder
        self.fingerprint = f"{stream.fingerprint}-{targets}"
        self.bank: Any = None
        self.keys: list[str] = []  # the keys of the last batch, in batch order
        self._pool = ThreadPoolExecutor(workers, "hetdiff-decode") if workers else None
        self._ahead: _Drawn | None = None  # the next batch, drawn and being decoded
        self._position: dict[str, Any] | None = None  # after the last batch handed out

    def __len__(self) -> int:
        return len(self.stream)

    def next_batch(self, size: int, keep: Sequence[int] | None = None) -> tuple[Tensor, Targets]:
        """The next ``size`` samples: (images (R, C, S, S) float32 in [-1, 1], targets (R,) int64
        or None), R = size, or only rows ``keep`` of them (R = len(keep), in that order): the
        stream advances by ``size`` either way, and only the kept samples are decoded."""
        from hetdiff.models.text import CaptionBank

        shape = (size, None if keep is None else tuple(keep))
        drawn, self._ahead = self._ahead, None
        if drawn is not None and drawn.shape != shape:  # decoded ahead for another request
            self.stream.load_state_dict(self._position)
            drawn = None
        drawn = drawn or self._draw(shape)
        items = [job.result() if isinstance(job, Future) else job for job in drawn.items]
        self._position = drawn.position
        if self._pool is not None:
            self._ahead = self._draw(shape)  # decoded while the caller trains on this batch
        self.keys = [item.key for item in items]
        images = torch.stack([item.image for item in items])
        if self.targets == "class":
            return images, torch.tensor([item.label for item in items], dtype=torch.int64)
        if self.targets == "caption":
            texts = tuple(item.caption for item in items)
            context, mask = self.text_encoder.encode(list(texts))
            self.bank = CaptionBank(texts, context, mask, self.text_encoder.name)
            return images, torch.arange(len(items), dtype=torch.int64)
        return images, None

    def _draw(self, shape: tuple[int, tuple[int, ...] | None]) -> _Drawn:
        """Draw the next ``shape[0]`` samples in order; decode the kept ones (in the pool)."""
        size, keep = shape
        samples = [self.stream.next_sample() for _ in range(size)]
        if keep is not None:
            samples = [samples[row] for row in keep]
        position = self.stream.state_dict() if self._pool is not None else None
        if self._pool is None:
            return _Drawn(shape, [self.stream.decode(sample) for sample in samples], position)
        return _Drawn(shape, [self._pool.submit(self.stream.decode, s) for s in samples], position)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (JSON-ready)."""
        if self._pool is None or self._position is None:
            return self.stream.state_dict()
        return self._position

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ahead, self._position = None, None
        self.stream.load_state_dict(state)

    def close(self) -> None:
        """Stop decoding ahead and drop the pool's threads (idempotent)."""
        self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass
class _Drawn:
    """A drawn batch: its request, its items (decoded, or futures of the pool) and the stream
    position after it (with a pool)."""

    shape: tuple[int, tuple[int, ...] | None]
    items: list[Any]
    position: dict[str, Any] | None


def train_streamed_expert(
    spec: str,
    settings: ExpertSettings,
    out_dir: str | Path,
    resolution: int | None = None,
    shuffle_buffer: int = StreamSettings().shuffle_buffer,
    decode_workers: int = StreamSettings().decode_workers,
    resume: bool = False,
    allow_lr_change: bool = False,
    state_url: str | None = None,
) -> Path:
    """Train one expert from scratch on the shard spec ``spec`` read as a stream (module
    docstring); return ``out_dir/expert.safetensors``. The checkpoint records the stream's
    classes (class-conditional) or the text encoder, the data spec and the stream fingerprint.
    ``state_url`` mirrors each committed training state to a store (``training.state_mirror``).
    ``decode_workers`` threads decode each batch and the next one ahead (``StreamBatches``).
    """
    from hetdiff.experts.build import build_expert_spec
    from hetdiff.experts.store import save_expert
    from hetdiff.training.expert import EXPERT_FILE, expert_net_and_loss, train_config_for
    from hetdiff.training.loop import train

    stream = ShardStream(spec, resolution, None, shuffle_buffer, settings.seed)
    encoder = None
    if settings.text_encoder is not None:
        from hetdiff.models.text import load_text_encoder

        encoder = load_text_encoder(settings.text_encoder)
        targets = "caption"
    else:
        targets = "class" if settings.class_conditional else "none"
    batches = StreamBatches(stream, targets, encoder, decode_workers)
    info = _DataInfo(stream, spec, f"stream-{batches.fingerprint}")
    net, model_dict, loss_fn = expert_net_and_loss(
        settings, info, None if encoder is None else encoder.dim,
        None if encoder is None else lambda: batches.bank,  # this batch's captions
    )  # fmt: skip
    checkpoint = Path(out_dir) / EXPERT_FILE

    def on_checkpoint(ema_state: dict[str, Tensor], step: int) -> None:
        spec_record = build_expert_spec(settings, info, model_dict, step)
        save_expert(checkpoint, ema_state, spec_record)

    config = train_config_for(settings, len(stream))
    try:
        train(net, batches, None, loss_fn, config, out_dir, on_checkpoint, resume=resume,
              allow_lr_change=allow_lr_change, state_url=state_url)  # fmt: skip
    finally:
        batches.close()
    return checkpoint


class _DataInfo:
    """What the net builder and the spec read of a data set (``ImageDataset``'s fields)."""

    def __init__(self, stream: ShardStream, spec: str, fingerprint: str) -> None:
        self.spec, self.fingerprint = spec, fingerprint
        self.resolution, self.channels = stream.resolution, stream.channels
        self.class_names, self.num_classes = stream.class_names, stream.num_classes


def run_streamed_job(job: Any) -> Path:
    """``run_expert_job`` for a job with ``stream`` (an ``ExpertJob``): one-line errors for
    what a stream cannot do yet (a partition's cluster, latents, a fine-tune), then trains."""
    from hetdiff.data.shards import is_shard_spec

    if not is_shard_spec(job.data):
        raise HetdiffError(f"--stream reads shards; --data {job.data!r} is not wds:, parquet: "
                           "or hf: (drop --stream to load it into memory)")  # fmt: skip
    for flag, value in (("--partition", job.partition), ("--autoencoder", job.autoencoder),
                        ("--init", job.init)):  # fmt: skip
        if value is not None:
            raise HetdiffError(f"--stream does not take {flag}; train from the cluster's own "
                               "shards (hetdiff split) or drop --stream")  # fmt: skip
    s = job.settings
    given = {name: value for name in ("shuffle_buffer", "decode_workers")
             if (value := getattr(job, name)) is not None}  # fmt: skip
    stream = StreamSettings(**given)  # checked: buffer >= 1, workers >= 0
    buffer, workers = stream.shuffle_buffer, stream.decode_workers
    print(f"training {s.objective} expert ({s.prediction}) on {job.data} as a stream "
          f"(shuffle buffer {buffer}, {workers} decode workers) -> {job.out}")  # fmt: skip
    print(json.dumps({"settings": s.to_dict(), "data": job.data, "shuffle_buffer": buffer}))
    path = train_streamed_expert(
        job.data, s, job.out, resolution=job.resolution, shuffle_buffer=buffer,
        decode_workers=workers, resume=job.resume,
        allow_lr_change=job.allow_lr_change, state_url=job.state_url,
    )  # fmt: skip
    print(f"wrote {path}")
    return path
