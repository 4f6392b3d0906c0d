"""Random image shifts while training (train.augment_shift)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sbnn.config import ConfigError, load_config
from sbnn.train import main
from sbnn.training import CHECKPOINT_FILE, load_checkpoint, train
from sbnn.training.augment import check_shift_input, draw_shifts, shift_images

IMAGE_RUN = """
[data]
name = "npz"
path = "images.npz"
encoding = "rate"
steps = 4

[model]
kind = "conv_snn"
hidden = [4]
conv_kernels = [3]
dense_hidden = [8]

[train]
epochs = 2
batch_size = 8
schedule = "none"
kl_weight = 0.01
eval_samples = 1
threads = 1
augment_shift = 2
"""


def _shifted_by_loops(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(images)
    height, width = images.shape[-2:]
    for b, (dy, dx) in enumerate(shifts.tolist()):
        for i in range(height):
            for j in range(width):
                if 0 <= i - dy < height and 0 <= j - dx < width:
                    out[b, ..., i, j] = images[b, ..., i - dy, j - dx]
    return out


@pytest.mark.parametrize("shape, dtype", [((5, 2, 6, 7), torch.float32), ((5, 3, 1, 6, 7), torch.uint8)])
def test_shift_images_moves_each_example_by_its_own_shift(shape, dtype):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 200, shape, generator=generator).to(dtype)
    shifts = draw_shifts(shape[0], 3, generator)
    shifts[0] = torch.tensor([3, -3])   # the extremes are covered
    shifted = shift_images(images, shifts, 3)
    assert shifted.dtype == dtype and shifted.shape == images.shape
    assert torch.equal(shifted, _shifted_by_loops(images, shifts))
    assert torch.equal(shift_images(images, torch.zeros_like(shifts), 3), images)


def test_draw_shifts_is_seeded_and_covers_the_range():
    first = draw_shifts(4000, 2, torch.Generator().manual_seed(7))
    assert torch.equal(first, draw_shifts(4000, 2, torch.Generator().manual_seed(7)))
    assert first.shape == (4000, 2) and set(first.unique().tolist()) == {-2, -1, 0, 1, 2}


def test_check_shift_input_names_what_cannot_be_shifted():
    assert check_shift_input(0, (700,)) is None and check_shift_input(2, (1, 28, 28)) is None
    assert "not (channels, height, width)" in check_shift_input(2, (700,))
    assert "out of view" in check_shift_input(8, (1, 8, 8))


def _image_data(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 48)
    images = rng.random((48, 1, 8, 8)).astype(np.float32) * 0.3
    images[labels == 1, :, 2:6, 2:6] += 0.7   # class 1: a bright square
    np.savez(folder / "images.npz", x_train=images[:32], y_train=labels[:32], x_test=images[32:],
             y_test=labels[32:])
    (folder / "run.toml").write_text(IMAGE_RUN)
    return folder / "run.toml"


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]


def test_shifted_training_is_reproducible_and_resumes_with_the_same_shifts(tmp_path):
    config_path = _image_data(tmp_path)
    train(load_config(config_path), tmp_path / "straight", json_mode=True)
    train(load_config(config_path, ["train.epochs=1"]), tmp_path / "resumed", json_mode=True)
    train(load_config(config_path), tmp_path / "resumed", resume=True, json_mode=True)
    train(load_config(config_path, ["train.augment_shift=0"]), tmp_path / "unshifted", json_mode=True)
    straight, resumed, unshifted = (_weights(tmp_path / name) for name in ("straight", "resumed", "unshifted"))
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert any(not torch.equal(straight[name], unshifted[name]) for name in straight)


def test_a_shift_of_non_image_input_is_a_one_line_error(tmp_path, capsys):
    config_path = _image_data(tmp_path)
    np.savez(tmp_path / "flat.npz", x_train=np.zeros((8, 5), np.float32), y_train=np.arange(8) % 2,
             x_test=np.zeros((4, 5), np.float32), y_test=np.arange(4) % 2)
    with pytest.raises(ConfigError, match=r"train.augment_shift: .*\(5,\) is not \(channels, height, width\)"):
        train(load_config(config_path, [f"data.path='{tmp_path / 'flat.npz'}'", "model.kind='snn'"]),
              tmp_path / "run", json_mode=True)
    assert main([str(config_path), "--out", str(tmp_path / "cli"), "--set", "train.augment_shift=9"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "train.augment_shift" in error and "out of view" in error
