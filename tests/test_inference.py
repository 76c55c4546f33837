"""Tiled prediction and test-time augmentation against whole-image prediction, on a tiny net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segsweep.inference import sliding_window_probs, tile_starts, tta_probs

TILE, OVERLAP, RADIUS = 64, 0.25, 3  # RADIUS: half the receptive field (7) of the net below


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)  # (one torch thread per test process: conftest.py)


@pytest.fixture
def predict():
    """3 stacked 3x3 convs, padding 1, no BN: fully convolutional, receptive field 7."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 2, 3, padding=1),
    ).eval()
    return lambda x: net(x).softmax(dim=1)


def clean_mask(height: int, width: int) -> torch.Tensor:
    """Pixels that every tile covering them sees with full context: farther than RADIUS from any
    tile edge inside the image (tile edges on the image border are the whole image's border too:
    same zero padding). There tiles and the whole image agree exactly, so any blend must too."""
    step = int(TILE * (1 - OVERLAP))
    clean = torch.ones(height, width, dtype=torch.bool)
    for y in tile_starts(height, TILE, step):
        for x in tile_starts(width, TILE, step):
            cut = torch.zeros(TILE, TILE, dtype=torch.bool)
            if y > 0:
                cut[:RADIUS] = True
            if y + TILE < height:
                cut[-RADIUS:] = True
            if x > 0:
                cut[:, :RADIUS] = True
            if x + TILE < width:
                cut[:, -RADIUS:] = True
            clean[y : y + TILE, x : x + TILE] &= ~cut
    return clean


def test_tile_starts_flush_with_border():
    assert tile_starts(200, 64, 48) == [0, 48, 96, 136]
    assert tile_starts(64, 64, 48) == [0] and tile_starts(40, 64, 48) == [0]


def test_tiled_equals_whole_image(predict):
    image = torch.randn(3, 200, 232)
    whole = predict(image[None])[0].detach()
    tiled = sliding_window_probs(predict, image, TILE, OVERLAP)
    assert tiled.shape == (2, 200, 232)
    error = (tiled - whole).abs().amax(dim=0)
    clean = clean_mask(200, 232)
    assert clean.float().mean() > 0.8
    assert error[clean].max() < 1e-5
    # Near seams, tiles that cut the context still weigh in, but little: the Gaussian makes them
    # weigh ~1e-3 of the tile seeing the pixel best (plain averaging: ~40x the error measured here).
    assert error.max() < 2e-3
    plain = (sliding_window_probs(predict, image, TILE, OVERLAP, sigma_scale=None) - whole).abs()
    assert plain.max() > 10 * error.max()


def test_no_seams(predict):
    # A smooth image gives a smooth prediction: seams would show as jumps between neighbours.
    ys, xs = torch.meshgrid(torch.linspace(0, 3, 200), torch.linspace(0, 3, 232), indexing="ij")
    image = torch.stack([ys.sin(), xs.cos(), (xs + ys).sin()])
    whole = predict(image[None])[0].detach()

    def largest_jump(probs: torch.Tensor) -> float:
        inner = probs[:, 4:-4, 4:-4]  # the image border's zero padding makes real jumps there
        return max((inner.diff(dim=d)).abs().max().item() for d in (1, 2))

    tiled = sliding_window_probs(predict, image, TILE, OVERLAP)
    assert largest_jump(tiled) <= 1.05 * largest_jump(whole) + 1e-6
    # the check has teeth: plain averaging leaves seams
    plain = sliding_window_probs(predict, image, TILE, OVERLAP, sigma_scale=None)
    assert largest_jump(plain) > 5 * largest_jump(whole)


def test_batch_size_does_not_change_result(predict):
    image = torch.randn(3, 150, 170)
    one = sliding_window_probs(predict, image, TILE, OVERLAP, batch_size=1)
    eight = sliding_window_probs(predict, image, TILE, OVERLAP, batch_size=8)
    torch.testing.assert_close(one, eight, atol=1e-6, rtol=0)


def test_small_image_is_one_call(predict):
    image = torch.randn(3, 40, 50)
    torch.testing.assert_close(sliding_window_probs(predict, image, TILE), predict(image[None])[0])


def test_image_smaller_than_tile_in_one_dimension(predict):
    image, shapes = torch.randn(3, 40, 150), []

    def recording(tiles):
        shapes.append(tuple(tiles.shape))
        return predict(tiles)

    tiled = sliding_window_probs(recording, image, TILE, OVERLAP, batch_size=8)
    assert shapes == [(3, 3, 40, 64)]  # tiles at x = 0, 48, 86, all 40 high, one batch
    assert (tiled - predict(image[None])[0]).abs().max() < 2e-3


@pytest.mark.parametrize("rot90", [False, True])
def test_tta_equivariant_function_unchanged(rot90):
    images = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(tta_probs(torch.sigmoid, images, rot90=rot90), images.sigmoid())


def test_tta_averages_inverse_transformed_predictions():
    ramp = torch.tensor([[0.0, 1, 2], [10, 11, 12]])  # position-dependent: not flip-equivariant
    images = torch.tensor([[1.0, 2, 3], [4, 5, 6]]).reshape(1, 1, 2, 3)
    # views (prediction mapped back): identity -> v * ramp; h-flip -> v * ramp flipped left-right
    # [[2, 1, 0], [12, 11, 10]]; v-flip -> v * ramp flipped up-down [[10, 11, 12], [0, 1, 2]].
    # Mean: v * [[12, 13, 14], [22, 23, 24]] / 3.
    expected = images * torch.tensor([[12.0, 13, 14], [22, 23, 24]]) / 3
    torch.testing.assert_close(tta_probs(lambda x: x * ramp, images), expected)
    torch.testing.assert_close(tta_probs(lambda x: x * ramp, images, flips=False), images * ramp)


def test_tta_rot90_keeps_shape_of_non_square_input(predict):
    images = torch.randn(2, 3, 16, 24)
    probs = tta_probs(predict, images, rot90=True)
    assert probs.shape == (2, 2, 16, 24)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 16, 24))


def test_tta_inside_tiles_equals_tta_of_whole_image(predict):
    image = torch.randn(3, 120, 136)
    whole = tta_probs(predict, image[None])[0]
    tiled = sliding_window_probs(lambda tiles: tta_probs(predict, tiles), image, TILE, OVERLAP)
    # 3x3 kernels flipped still reach RADIUS pixels: the same clean region
    error = (tiled - whole).abs().amax(dim=0)
    assert error[clean_mask(120, 136)].max() < 1e-5 and error.max() < 2e-3
