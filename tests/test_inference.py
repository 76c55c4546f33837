"""Tiled prediction and test-time augmentation against whole-image prediction, on a tiny net; the
Predictor that composes them; one prediction contract for every task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segsweep.inference import Prediction, Predictor, sliding_window_probs, tile_starts, tta_probs
from segsweep.predict import prob_channels
from segsweep.tasks import PerPixelTask
from segsweep.train import build_datamodule, build_task

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


# -- the Predictor: options checked, views and tiles composed as documented ----------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"tta": "mirror"}, "tta='mirror' is not one of"),
    ({"tile_size": 0}, "tile_size=0 must be a positive"),
    ({"tile_size": 64, "tile_overlap": 1.0}, "tile_overlap=1.0 must be in"),
    ({"tile_batch_size": 0}, "tile_batch_size=0 must be a positive"),
])
def test_predictor_names_a_bad_option(options, message):
    with pytest.raises(ValueError, match=message):
        Predictor(**options)


def test_predictor_runs_tta_inside_tiles():
    ramp = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)  # not flip-equivariant
    images = torch.randn(1, 2, 5, 7)

    def network(x):
        return x * ramp[..., : x.shape[-2], : x.shape[-1]]

    assert Predictor().plain and not Predictor(tta="flips").plain
    torch.testing.assert_close(Predictor().maps(network, images), network(images))
    # flips: the mean of the identity and both flips, each prediction flipped back (by hand).
    by_hand = (network(images) + network(images.flip(-1)).flip(-1) + network(images.flip(-2)).flip(-2)) / 3
    torch.testing.assert_close(Predictor(tta="flips").maps(network, images), by_hand)
    image = torch.randn(3, 120, 136)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    tiled = Predictor(tta="flips", tile_size=TILE, tile_batch_size=2).maps(conv, image[None])[0]
    expected = sliding_window_probs(lambda t: tta_probs(conv, t), image, TILE, 0.25, batch_size=2)
    torch.testing.assert_close(tiled, expected)


# -- one contract for every task ------------------------------------------------------------------

SMALL_NET = ["model=classic_unet", "model.depth=2", "model.base_width=8"]
TASKS = {
    "binary": SMALL_NET,
    "semantic": ["task=semantic", *SMALL_NET],
    "instance": ["task=instance", *SMALL_NET],  # 3 shape classes: + class maps
    "maskrcnn": ["task=instance", "model=maskrcnn", "encoder=resnet18", "model.detections_per_image=5",
                 "+model.rpn_pre_nms_top_n_test=32", "+model.rpn_post_nms_top_n_test=16"],
}


@pytest.mark.parametrize("kind", list(TASKS))
def test_every_task_predicts_one_kind_of_prediction(make_cfg, kind):
    cfg = make_cfg(*TASKS[kind])
    task = build_task(cfg, build_datamodule(cfg)).eval()
    images = torch.randn(2, 3, 50, 70)
    with torch.inference_mode():
        prediction = task.predict(images)
    classes = len(task.class_names)
    assert isinstance(prediction, Prediction) and prediction.labels.shape == (2, 50, 70)
    assert 0 <= prediction.labels.min() and prediction.labels.max() < classes
    if kind == "maskrcnn":
        assert prediction.probs is None and not isinstance(task, PerPixelTask)
        assert not hasattr(task, "logits_to_probs")  # detections, no per-pixel maps to average
        with pytest.raises(ValueError, match="MaskRCNNTask predicts whole images only"):
            type(task)(**task.hparams, predictor=Predictor(tta="flips"))
    else:
        with torch.inference_mode():
            logits = task(images)
        assert logits.shape == (2, task.num_outputs, 50, 70)
        assert 0 <= prediction.probs.min() and prediction.probs.max() <= 1
    if kind in ("binary", "semantic"):
        assert prediction.instances is None and prediction.probs.shape == (2, classes, 50, 70)
        torch.testing.assert_close(prediction.probs.sum(1), torch.ones(2, 50, 70))
        assert torch.equal(prediction.labels, prediction.probs.argmax(1))
    elif kind == "instance":  # object maps, then one map per object class (3 shape kinds)
        assert prediction.probs.shape[1] == len(task.map_names) + 3 == len(prob_channels(task))
        assert prob_channels(task)[-3:] == task.class_names[1:]
    if prediction.instances is not None:  # each object's pixels carry its class, the rest background
        for labels, found in zip(prediction.labels.numpy(), prediction.instances, strict=True):
            assert found.labels.shape == (50, 70)
            expected = np.concatenate([[0], found.classes])[found.labels]
            assert np.array_equal(labels, expected)


def test_validation_runs_through_the_tasks_predictor(make_cfg):
    """A task built with a TTA predictor scores validation on the averaged maps (no loss: no logits)."""
    cfg = make_cfg(*SMALL_NET)
    plain = build_task(cfg, build_datamodule(cfg)).eval()
    flips = type(plain)(**plain.hparams, predictor=Predictor(tta="flips"))
    flips.load_state_dict(plain.state_dict())
    flips.eval()
    batch = {"image": torch.randn(2, 3, 32, 48), "mask": torch.randint(0, 2, (2, 32, 48))}
    with torch.inference_mode():
        out = flips.validation_step(batch, 0)
        maps = [plain.logits_to_probs(plain(view)) for view in (batch["image"], batch["image"].flip(-1))]
        maps.append(plain.logits_to_probs(plain(batch["image"].flip(-2))).flip(-2))
        maps[1] = maps[1].flip(-1)
    assert "loss" not in out
    assert torch.equal(out["preds"], (sum(maps) / 3).argmax(1))
