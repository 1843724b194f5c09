"""Conditioning bundle: null forms, row selection, batch concatenation, label dropout."""

from __future__ import annotations

import pytest
import torch

from hetdiff.conditioning import (
    NULL_CLASS,
    Conditioning,
    as_conditioning,
    drop_labels,
)
from hetdiff.errors import HetdiffError


def _text_cond(batch: int = 3, length: int = 4, width: int = 5) -> Conditioning:
    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 2:] = False
    return Conditioning(
        class_labels=torch.arange(batch),
        context=torch.randn(batch, length, width, generator=gen),
        context_mask=mask,
    )


def test_null_replaces_every_condition_and_keeps_shapes() -> None:
    cond = _text_cond()
    null = cond.null()
    assert NULL_CLASS == -1
    assert torch.equal(null.class_labels, torch.full((3,), -1))
    assert null.class_labels.dtype == torch.int64
    assert null.context.shape == cond.context.shape
    assert torch.count_nonzero(null.context) == 0
    assert null.context_mask.shape == (3, 4) and not null.context_mask.any()
    assert torch.equal(cond.class_labels, torch.arange(3))  # original untouched


def test_null_of_labels_only_sets_no_context() -> None:
    null = Conditioning(class_labels=torch.tensor([4, 7])).null()
    assert null.context is None and null.context_mask is None
    assert null.class_labels.tolist() == [-1, -1]


def test_index_selects_rows_with_ints_and_bool_mask() -> None:
    cond = _text_cond()
    picked = cond.index(torch.tensor([2, 0]))
    assert picked.class_labels.tolist() == [2, 0]
    assert torch.equal(picked.context[1], cond.context[0])
    assert torch.equal(picked.context_mask[1], cond.context_mask[0])
    by_mask = cond.index(torch.tensor([False, True, True]))
    assert by_mask.class_labels.tolist() == [1, 2]
    assert by_mask.batch_size == 2


def test_cat_puts_self_first_and_pads_shorter_context_with_masked_zeros() -> None:
    a = _text_cond(batch=2, length=4)
    b = Conditioning(class_labels=torch.tensor([9]), context=torch.ones(1, 2, 5))
    both = a.cat(b)
    assert both.class_labels.tolist() == [0, 1, 9]
    assert both.context.shape == (3, 4, 5)
    assert torch.equal(both.context[:2], a.context)
    assert torch.equal(both.context[2, :2], torch.ones(2, 5))
    assert torch.count_nonzero(both.context[2, 2:]) == 0
    assert both.context_mask[2].tolist() == [True, True, False, False]
    assert torch.equal(both.context_mask[:2], a.context_mask)


def test_cat_with_null_doubles_the_batch_for_guidance() -> None:
    cond = Conditioning(class_labels=torch.tensor([3, 5]))
    both = cond.cat(cond.null())
    assert both.class_labels.tolist() == [3, 5, -1, -1]


def test_cat_rejects_different_fields() -> None:
    with pytest.raises(HetdiffError, match="different fields"):
        Conditioning(class_labels=torch.tensor([1])).cat(Conditioning(context=torch.ones(1, 2, 3)))


def test_to_moves_and_keeps_values() -> None:
    cond = _text_cond()
    moved = cond.to("cpu")
    assert torch.equal(moved.context, cond.context)
    assert torch.equal(moved.context_mask, cond.context_mask)
    assert torch.equal(moved.class_labels, cond.class_labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_labels": torch.tensor([0.5])}, "1-D int64"),
        ({"context": torch.ones(2, 3)}, r"\(B, L, D\)"),
        (
            {"context": torch.ones(2, 3, 4), "context_mask": torch.ones(2, 4).bool()},
            "bool of shape",
        ),
        ({"context": torch.ones(2, 3, 4), "context_mask": torch.ones(2, 3)}, "bool of shape"),
        ({"class_labels": torch.tensor([1, 2, 3]), "context": torch.ones(2, 3, 4)}, "3 rows"),
        ({"context_mask": torch.ones(2, 3).bool()}, "without context"),
    ],
)
def test_invalid_conditioning_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(HetdiffError, match=message):
        Conditioning(**kwargs)


def test_drop_labels_extremes_rate_and_reproducibility() -> None:
    labels = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(drop_labels(labels, 0.0), labels)
    assert (drop_labels(labels, 1.0) == -1).all()
    dropped = drop_labels(labels, 0.3, torch.Generator().manual_seed(2))
    kept = dropped != -1
    assert abs((~kept).float().mean().item() - 0.3) < 0.015  # binomial std is 0.003
    assert torch.equal(dropped[kept], labels[kept])  # survivors are unchanged
    again = drop_labels(labels, 0.3, torch.Generator().manual_seed(2))
    assert torch.equal(dropped, again)


def test_drop_labels_rejects_bad_probability() -> None:
    with pytest.raises(HetdiffError, match="1.5"):
        drop_labels(torch.tensor([1]), 1.5)


def test_as_conditioning_accepts_labels_and_rejects_floats() -> None:
    assert as_conditioning(None) is None
    cond = Conditioning(class_labels=torch.tensor([1]))
    assert as_conditioning(cond) is cond
    from_tensor = as_conditioning(torch.tensor([2, 3], dtype=torch.int32))
    assert from_tensor.class_labels.dtype == torch.int64
    assert from_tensor.class_labels.tolist() == [2, 3]
    with pytest.raises(HetdiffError, match="float32"):
        as_conditioning(torch.ones(2))
