"""``hetdiff.training.batches``: a rank's rows of a streamed global batch are the rows it takes
of the whole batch, so decoding only them changes nothing the loss sees."""

from __future__ import annotations

import pytest
import torch

from hetdiff.errors import HetdiffError
from hetdiff.training.batches import next_stream_batch, rank_rows


class Rows:
    """A BatchStream whose image i is the constant i (B, 1, 2, 2); it records each keep."""

    fingerprint = "rows"

    def __init__(self, honour_keep: bool = True) -> None:
        self.start, self.keeps, self.honour_keep = 0, [], honour_keep

    def __len__(self) -> int:
        return 1000

    def next_batch(self, size, keep=None):
        rows = torch.arange(self.start, self.start + size)
        self.start += size
        self.keeps.append(keep)
        if keep is not None and self.honour_keep:
            rows = rows[torch.as_tensor(keep)]
        return rows.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2), rows % 3

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_rank_rows_split_each_batch_once_as_the_micro_steps_do(world, accum) -> None:
    batch, micro = 16, 16 // accum
    rows = [rank_rows(batch, accum, world, rank) for rank in range(world)]
    assert sorted(torch.cat(rows).tolist()) == list(range(batch))
    for rank in range(world):
        expected = [r for j in range(accum) for r in range(j * micro, (j + 1) * micro)[rank::world]]
        assert rows[rank].tolist() == expected


@pytest.mark.parametrize("world, accum", [(1, 1), (2, 1), (2, 2), (4, 2)])
def test_each_micro_step_gets_the_rows_of_the_whole_batch(world, accum) -> None:
    batch, micro = 16, 16 // accum
    for rank in range(world):
        stream = Rows()
        stream.next_batch(batch)  # one step already taken: rows 16..31 come next
        images, targets, block = next_stream_batch(stream, batch, accum, world, rank)
        assert images.shape[0] == batch // world  # only this rank's rows were "decoded"
        assert stream.keeps[-1] == (
            None if world == 1 else rank_rows(batch, accum, world, rank).tolist()
        )
        whole = torch.arange(16, 32)
        for j in range(accum):
            rows = block[j * micro : (j + 1) * micro][rank::world]  # as accumulate_gradients
            expected = whole[j * micro : (j + 1) * micro][rank::world]
            assert torch.equal(images[rows, 0, 0, 0], expected.float())
            assert torch.equal(targets[rows], expected % 3)


def test_a_stream_that_ignores_keep_is_refused() -> None:
    with pytest.raises(HetdiffError, match="must honour keep"):
        next_stream_batch(Rows(honour_keep=False), 16, 1, 2, 0)
