"""Signed safetensors files: one sha256 over everything a checkpoint's behaviour depends on, and
the same bytes for the same content.

Every checkpoint hetdiff writes (experts, students, routers, training state) is a standard
safetensors file whose string metadata carries ``DIGEST_KEY`` = ``checkpoint_digest(tensors,
metadata)``::

    sha256( "hetdiff-digest/2\\n"
            + canonical JSON of the metadata without DIGEST_KEY (sorted keys, no spaces) + "\\n"
            + for each tensor in sorted name order: "name|dtype|shape|" + its raw bytes )

so a changed byte of the weights, of the spec JSON or of any other metadata value is caught on
read. The header's own bytes (its length, the JSON syntax, the data offsets) are checked by
safetensors when it parses the file: a flip there makes the file unreadable or moves a tensor,
which changes the tensors the digest sees. Reading verifies before anything is built; a file
without a digest is refused unless the caller trusts unsigned files (``trust_unsigned=True``,
or ``hetdiff ... --trust-unsigned``, which sets ``TRUST_ENV=1`` for the process and its jobs).

Legacy files: expert checkpoints written before this digest carry ``LEGACY_KEY``
(``hetdiff_sha256``), a sha256 over the tensors only (``tensors_digest``). They still load: the
legacy key is verified with its old meaning (weights only; the spec JSON is not covered).

Deterministic bytes: safetensors (0.8) writes the metadata map in hash order, which differs
between processes (safetensors issue #584). ``serialize`` therefore lets safetensors write the
file, then reorders the entries of its ``__metadata__`` object by key, after checking that
Python's compact JSON reproduces safetensors' header byte for byte (so only the order changes,
the length and the offsets stay), and checks that the result parses to the same header.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_write_bytes

DIGEST_KEY = "hetdiff_digest"  # sha256 over metadata + tensors (this module's format)
LEGACY_KEY = "hetdiff_sha256"  # expert checkpoints before it: sha256 over the tensors only
TRUST_ENV = "HETDIFF_TRUST_UNSIGNED"  # "1": accept files without a digest (``--trust-unsigned``)
_DIGEST_TAG = b"hetdiff-digest/2\n"


def trusts_unsigned(trust_unsigned: bool | None = None) -> bool:
    """``trust_unsigned`` when given, else whether ``$HETDIFF_TRUST_UNSIGNED`` is "1"."""
    if trust_unsigned is not None:
        return bool(trust_unsigned)
    return os.environ.get(TRUST_ENV) == "1"


def _update_with_tensors(digest: hashlib._Hash, tensors: Mapping[str, Tensor]) -> None:
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 (hex) over (name, dtype, shape, raw bytes) of every tensor, in sorted name order
    (the legacy ``hetdiff_sha256`` meaning; also a weights-only fingerprint)."""
    digest = hashlib.sha256()
    _update_with_tensors(digest, tensors)
    return digest.hexdigest()


def canonical_json(obj: object) -> str:
    """Sorted-key, compact, ASCII JSON: one text per value (strict: no NaN/inf)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def checkpoint_digest(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 (hex) over the metadata (without ``DIGEST_KEY``) as canonical JSON and every
    tensor's name, dtype, shape and bytes (the module docstring gives the exact layout)."""
    digest = hashlib.sha256(_DIGEST_TAG)
    signed = {k: v for k, v in metadata.items() if k != DIGEST_KEY}
    digest.update(canonical_json(signed).encode() + b"\n")
    _update_with_tensors(digest, tensors)
    return digest.hexdigest()


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its ``__metadata__`` entries in sorted key order."""
    length = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + length]
    body = raw.rstrip(b" ")
    header = json.loads(body)  # dicts keep the file's order
    meta = header.get("__metadata__")
    if not meta or list(meta) == sorted(meta):
        return data
    as_written = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if as_written != body:  # not the JSON we can reproduce: keep safetensors' bytes
        return data
    ordered = {"__metadata__": dict(sorted(meta.items()))}
    ordered.update((k, v) for k, v in header.items() if k != "__metadata__")
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) != len(body) or json.loads(text) != header:
        return data
    return data[:8] + text + raw[len(body) :] + data[8 + length :]


def serialize(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> bytes:
    """The bytes of a signed safetensors file: ``tensors`` (copied to CPU, contiguous) and
    ``metadata`` plus ``DIGEST_KEY``; the same content always gives the same bytes."""
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in metadata.items() if k != DIGEST_KEY}
    meta[DIGEST_KEY] = checkpoint_digest(cpu, meta)
    return _sorted_metadata(safetensors.torch.save(cpu, metadata=meta))


def write_signed(
    path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write a signed safetensors file atomically (permissions follow the umask); returns path."""
    path = Path(path)
    atomic_write_bytes(path, serialize(tensors, metadata))
    return path


def read_header(path: str | os.PathLike[str], what: str) -> tuple[dict[str, str], dict[str, list]]:
    """(metadata, {tensor name: shape}) from the header alone (no tensor data is read).

    ``what`` names the file in errors ("expert checkpoint"); a missing, truncated or corrupt
    file is a one-line HetdiffError."""
    path = Path(path)
    if not path.is_file():
        raise HetdiffError(f"{what} {path} does not exist")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise HetdiffError(f"{what} {path} is truncated or corrupt ({_first_line(err)})") from None
    return metadata, shapes


def read_tensors(path: str | os.PathLike[str], what: str) -> dict[str, Tensor]:
    """Every tensor of the file, on CPU; one-line errors for an unreadable file."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as err:
        raise HetdiffError(f"{what} {path} is truncated or corrupt ({_first_line(err)})") from None


def verify(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    what: str,
    trust_unsigned: bool | None = None,
) -> None:
    """Refuse (one-line HetdiffError) a file whose digest does not match its tensors and
    metadata, or that carries none (unless unsigned files are trusted). A legacy
    ``hetdiff_sha256`` is checked with its old meaning (tensors only)."""
    if DIGEST_KEY in metadata:
        if checkpoint_digest(tensors, metadata) != metadata[DIGEST_KEY]:
            raise HetdiffError(
                f"{what} {path} is corrupt or was changed after writing: its weights and "
                "metadata do not match the stored sha256 digest; use an intact copy"
            )
        return
    if LEGACY_KEY in metadata:
        if tensors_digest(tensors) != metadata[LEGACY_KEY]:
            raise HetdiffError(
                f"{what} {path} is corrupt: its weights do not match the stored sha256"
            )
        return
    if not trusts_unsigned(trust_unsigned):
        raise HetdiffError(
            f"{what} {path} carries no digest, so its bytes cannot be verified; rewrite it with "
            "this hetdiff, or pass --trust-unsigned if you trust its source"
        )


def read_signed(
    path: str | os.PathLike[str], what: str, trust_unsigned: bool | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of a signed file, verified (``verify``)."""
    metadata, _ = read_header(path, what)
    tensors = read_tensors(path, what)
    verify(path, tensors, metadata, what, trust_unsigned)
    return tensors, metadata


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
