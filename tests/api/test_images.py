"""hetdiff.sample: the same images as the library's generate, one seed per image, and one-line
errors for conditions the model cannot take."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hetdiff
from expert_files import write_ddpm_expert
from hetdiff.sampling.generate import generate


@pytest.fixture
def expert(tmp_path):
    return hetdiff.load_expert(write_ddpm_expert(tmp_path / "expert.safetensors"))


def test_sample_equals_generate_with_the_classes_in_turn(expert):
    images = hetdiff.sample(expert, n=12, steps=3, seed=5)
    labels = torch.arange(12) % 10  # a class model without classes=: 0, 1, ..., 9, 0, 1
    expected = generate(expert, (1, 8, 8), list(range(5, 17)), 3, "heun", labels)
    assert images.shape == (12, 1, 8, 8) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_an_image_depends_on_its_seed_and_class_alone(expert):
    batch = hetdiff.sample(expert, n=6, steps=2, seeds=[3, 1, 4, 1, 5, 9], classes=7, batch_size=4)
    alone = hetdiff.sample(expert, n=1, steps=2, seeds=[4], classes=[7])
    torch.testing.assert_close(batch[2:3], alone, rtol=1e-3, atol=1e-3)  # float32 batching
    torch.testing.assert_close(batch[1], batch[3], rtol=0, atol=0)  # seed 1 twice
    guided = hetdiff.sample(expert, n=1, steps=2, seeds=[4], classes=7, cfg=3.0)
    assert not torch.allclose(guided, alone)


def test_sample_without_a_spec_needs_a_shape(expert):
    bare = hetdiff.velocity_expert(
        expert.net, "ddpm", "eps", expert.schedule.spec, learned_variance=True
    )
    with pytest.raises(hetdiff.HetdiffError, match="give shape"):
        hetdiff.sample(bare, n=2, steps=2)
    with pytest.raises(hetdiff.HetdiffError, match="by name needs a loaded model"):
        hetdiff.sample(bare, n=2, steps=2, shape=(1, 8, 8), classes="seven")
    torch.testing.assert_close(
        hetdiff.sample(bare, n=2, steps=2, shape=(1, 8, 8), classes=[0, 1]),
        hetdiff.sample(expert, n=2, steps=2, classes=[0, 1]),
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": [1, 2, 3]}, "3 seeds for 2 images"),
        ({"prompts": ["a digit"]}, "the model is class-conditional"),
        ({"strategy": "top1"}, "applies to an ensemble"),
        ({"classes": 12}, r"outside \[0, 10\)"),
        ({"solver": "rk4"}, "rk4"),
    ],
)
def test_sample_refuses_in_one_line(expert, kwargs, message):
    with pytest.raises(hetdiff.HetdiffError, match=message):
        hetdiff.sample(expert, n=2, steps=2, **kwargs)


def test_save_images_writes_a_grid_that_reopens(expert, tmp_path):
    images = hetdiff.sample(expert, n=4, steps=2)
    path = hetdiff.save_images(images * 100, tmp_path / "grid.png", nrow=2)  # clamped to [-1, 1]
    grid = np.asarray(Image.open(path))
    assert grid.ndim in (2, 3) and set(np.unique(grid)) <= {0, 255} | set(range(256))
    assert grid.shape[0] == grid.shape[1]  # 2 x 2 images of 8 px with equal padding
