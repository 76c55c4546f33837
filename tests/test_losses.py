"""Losses: every conf/loss config builds in its modes, matches its formula, honours ignore_index."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segsweep.losses import (
    MODES,
    BCEWithLogits,
    CrossEntropy,
    PowerDiceLoss,
    PowerJaccardLoss,
    WeightedSum,
    build_loss,
    config_modes,
    loss_configs,
    losses_for_mode,
)
from segsweep.losses.build import LOSS_CONF_DIR

IGNORE = 255
CLASSES = {"binary": 1, "multiclass": 3}  # logit channels per mode
CONFIGS = loss_configs()
MODES_OF = {name: config_modes(node) for name, node in CONFIGS.items()}
SUPPORTED = [(name, mode) for name in CONFIGS for mode in MODES if mode in MODES_OF[name]]
UNSUPPORTED = [(name, mode) for name in CONFIGS for mode in MODES if mode not in MODES_OF[name]]


def make_loss(name: str, mode: str, ignore_index: int | None = IGNORE):
    factory = instantiate(OmegaConf.load(LOSS_CONF_DIR / f"{name}.yaml"))
    return build_loss(factory, mode, ignore_index)


def random_batch(mode: str, seed: int = 0, ignored: float = 0.25):
    """(2, K, 8, 8) logits and (2, 8, 8) targets with about `ignored` of the pixels ignored."""
    gen = torch.Generator().manual_seed(seed)
    k = CLASSES[mode]
    logits = torch.randn(2, k, 8, 8, generator=gen)
    target = torch.randint(0, max(k, 2), (2, 8, 8), generator=gen)
    target[torch.rand(2, 8, 8, generator=gen) < ignored] = IGNORE
    return logits, target


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


# -- the configs -----------------------------------------------------------------------------
def test_expected_configs_present():
    assert {"cross_entropy", "bce", "dice", "jaccard", "power_jaccard", "power_dice", "focal",
            "lovasz", "tversky", "bce_dice", "ce_dice", "bce_power_jaccard"} <= set(CONFIGS)
    assert set(losses_for_mode("binary")) >= {"bce", "dice", "bce_dice"}
    assert "cross_entropy" not in losses_for_mode("binary")
    assert "bce" not in losses_for_mode("multiclass")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_is_a_commented_partial_without_mode(name):
    path = LOSS_CONF_DIR / f"{name}.yaml"
    assert path.read_text().startswith("# "), "each loss config opens with a one-line comment"
    node = OmegaConf.load(path)
    assert node._partial_ is True
    text = OmegaConf.to_yaml(node)
    # the task decides mode and ignore_index; a loss config never sets them
    assert "mode:" not in text and "ignore_index:" not in text
    assert config_modes(node), f"{name} works in no mode"


@pytest.mark.parametrize(("name", "mode"), SUPPORTED)
def test_config_builds_and_gives_finite_scalar_with_gradients(name, mode):
    loss_fn = make_loss(name, mode)
    logits, target = random_batch(mode)
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "mode"), SUPPORTED)
def test_ignored_pixels_do_not_change_the_loss(name, mode):
    loss_fn = make_loss(name, mode)
    logits, target = random_batch(mode)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    changed = logits.clone()
    noise = torch.randn(int(ignored.sum()), generator=torch.Generator().manual_seed(1))
    changed[ignored] = 20 * noise
    changed.requires_grad_(True)
    torch.testing.assert_close(loss_fn(changed, target), loss_fn(logits, target))
    loss_fn(changed, target).backward()
    assert (changed.grad[ignored] == 0).all()


@pytest.mark.parametrize(("name", "mode"), SUPPORTED)
def test_all_pixels_ignored_gives_zero(name, mode):
    loss_fn = make_loss(name, mode)
    logits, target = random_batch(mode, ignored=1.0)
    logits.requires_grad_(True)
    loss = loss_fn(logits, target)
    assert loss.ndim == 0 and loss.item() == 0
    loss.backward()
    assert (logits.grad == 0).all()


@pytest.mark.parametrize(("name", "mode"), UNSUPPORTED)
def test_wrong_mode_raises_with_the_valid_losses(name, mode):
    with pytest.raises(ValueError) as err:
        make_loss(name, mode)
    message = str(err.value)
    assert f"this task is {mode}" in message
    assert "use one of: " + ", ".join(losses_for_mode(mode)) in message


def test_wrong_mode_message_names_the_loss():
    expected = r"loss 'cross_entropy' is multiclass-only; this task is binary; use one of: bce, "
    with pytest.raises(ValueError, match=expected):
        make_loss("cross_entropy", "binary")
    with pytest.raises(ValueError, match=r"loss 'bce' is binary-only; this task is multiclass"):
        make_loss("bce", "multiclass")
    with pytest.raises(ValueError, match=r"term 'ce': loss 'cross_entropy' is multiclass-only"):
        make_loss("ce_dice", "binary")


@pytest.mark.parametrize("mode", ["multilabel", "Binary", None])
def test_build_loss_rejects_unknown_modes(mode):
    with pytest.raises(ValueError, match="loss mode must be one of"):
        make_loss("dice", mode)


def test_build_loss_accepts_a_config_node():
    node = OmegaConf.load(LOSS_CONF_DIR / "dice.yaml")
    assert isinstance(build_loss(node, "binary", IGNORE), smp.losses.DiceLoss)


# -- formulas against hand computations --------------------------------------------------------
# Binary: probabilities of a 1x1x2x2 image and its target.
BIN_PROBS = [0.9, 0.2, 0.6, 0.1]
BIN_TARGET = [1, 0, 1, 1]
# Multiclass: softmax probabilities of 3 classes at 4 pixels (rows sum to 1), and the target.
MC_PROBS = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]]
MC_TARGET = [0, 1, 2, 1]


def binary_inputs():
    logits = logit(torch.tensor(BIN_PROBS, dtype=torch.float64)).reshape(1, 1, 2, 2)
    return logits, torch.tensor(BIN_TARGET).reshape(1, 2, 2)


def multiclass_inputs():
    # log-probabilities are logits whose softmax is exactly the probabilities
    logits = torch.tensor(MC_PROBS, dtype=torch.float64).log().T.reshape(1, 3, 2, 2)
    return logits, torch.tensor(MC_TARGET).reshape(1, 2, 2)


def hand_power_jaccard(probs, target, p, s):
    inter = sum(q * y for q, y in zip(probs, target, strict=True))
    denom = sum(y**p for y in target) + sum(q**p for q in probs) - inter + s
    return 1 - (inter + s) / denom


def hand_power_dice(probs, target, p, s):
    inter = sum(q * y for q, y in zip(probs, target, strict=True))
    return 1 - (2 * inter + s) / (sum(y**p for y in target) + sum(q**p for q in probs) + s)


def per_class(probs_by_pixel, target, fn):
    """Mean over classes of fn(class probabilities, class indicator)."""
    k = len(probs_by_pixel[0])
    scores = [fn([px[c] for px in probs_by_pixel], [int(t == c) for t in target]) for c in range(k)]
    return sum(scores) / k


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("s", [0.0, 10.0])
def test_power_jaccard_matches_formula(p, s):
    logits, target = binary_inputs()
    expected = hand_power_jaccard(BIN_PROBS, BIN_TARGET, p, s)
    loss = PowerJaccardLoss("binary", p=p, smooth=s)(logits, target)
    assert loss.item() == pytest.approx(expected)

    logits, target = multiclass_inputs()
    expected = per_class(MC_PROBS, MC_TARGET, lambda q, y: hand_power_jaccard(q, y, p, s))
    loss = PowerJaccardLoss("multiclass", p=p, smooth=s)(logits, target)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("s", [0.0, 10.0])
def test_power_dice_matches_formula(p, s):
    logits, target = binary_inputs()
    expected = hand_power_dice(BIN_PROBS, BIN_TARGET, p, s)
    assert PowerDiceLoss("binary", p=p, smooth=s)(logits, target).item() == pytest.approx(expected)

    logits, target = multiclass_inputs()
    expected = per_class(MC_PROBS, MC_TARGET, lambda q, y: hand_power_dice(q, y, p, s))
    loss = PowerDiceLoss("multiclass", p=p, smooth=s)(logits, target)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("s", [0.0, 10.0])
def test_smp_jaccard_matches_formula(s):
    logits, target = binary_inputs()
    inter = 0.9 + 0.6 + 0.1  # written out: target is 1 at pixels 0, 2, 3
    expected = 1 - (inter + s) / (3 + sum(BIN_PROBS) - inter + s)
    loss = smp.losses.JaccardLoss("binary", smooth=s)(logits, target)
    assert loss.item() == pytest.approx(expected)

    logits, target = multiclass_inputs()
    expected = per_class(MC_PROBS, MC_TARGET, lambda q, y: hand_power_jaccard(q, y, 1, s))
    loss = smp.losses.JaccardLoss("multiclass", smooth=s)(logits, target)
    assert loss.item() == pytest.approx(expected)


def test_smp_dice_matches_formula():
    logits, target = binary_inputs()
    inter = 0.9 + 0.6 + 0.1
    expected = 1 - 2 * inter / (3 + sum(BIN_PROBS))
    assert smp.losses.DiceLoss("binary")(logits, target).item() == pytest.approx(expected)
    # smp 0.6 counts `smooth` twice: (2I + 2s) / (|y| + |y_hat| + 2s)
    expected = 1 - (2 * inter + 2 * 10) / (3 + sum(BIN_PROBS) + 2 * 10)
    loss = smp.losses.DiceLoss("binary", smooth=10)(logits, target)
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("s", [0.0, 10.0])
def test_power_losses_at_p1_equal_smp(mode, s):
    logits, target = random_batch(mode)
    kwargs = {"mode": mode, "ignore_index": IGNORE}
    torch.testing.assert_close(
        PowerJaccardLoss(p=1, smooth=s, **kwargs)(logits, target),
        smp.losses.JaccardLoss(smooth=s, **kwargs)(logits, target),
    )
    torch.testing.assert_close(
        PowerDiceLoss(p=1, smooth=s, **kwargs)(logits, target),
        smp.losses.DiceLoss(smooth=s / 2, **kwargs)(logits, target),
    )


def test_absent_class_adds_zero_but_counts_in_the_mean():
    """smp's averaging, kept by the power losses: classes absent from the batch score 0 loss."""
    logits, target = multiclass_inputs()
    target = torch.tensor([0, 1, 1, 1]).reshape(1, 2, 2)  # class 2 absent
    labels = [0, 1, 1, 1]
    present = [
        hand_power_jaccard([px[c] for px in MC_PROBS], [int(t == c) for t in labels], 2, 10)
        for c in (0, 1)
    ]
    expected = sum(present) / 3
    assert PowerJaccardLoss("multiclass")(logits, target).item() == pytest.approx(expected)


def test_power_loss_rejects_p_below_one():
    with pytest.raises(ValueError, match="p must be >= 1"):
        PowerJaccardLoss("binary", p=0.5)


def test_bce_equals_torch_on_kept_pixels():
    logits, target = random_batch("binary")
    kept = target != IGNORE
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][kept], target[kept].float())
    torch.testing.assert_close(BCEWithLogits("binary", IGNORE)(logits, target), expected)

    expected = F.binary_cross_entropy_with_logits(
        logits[:, 0][kept], target[kept].float(), pos_weight=torch.tensor(3.0)
    )
    loss = BCEWithLogits("binary", IGNORE, pos_weight=3)(logits, target)
    torch.testing.assert_close(loss, expected)

    target[~kept] = 0
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    torch.testing.assert_close(BCEWithLogits("binary", ignore_index=None)(logits, target), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_cross_entropy_equals_torch(smoothing, weights):
    logits, target = random_batch("multiclass")
    w = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(
        logits, target, weight=w, ignore_index=IGNORE, label_smoothing=smoothing
    )
    loss_fn = CrossEntropy("multiclass", IGNORE, label_smoothing=smoothing, class_weights=weights)
    torch.testing.assert_close(loss_fn(logits, target), expected)


# -- weighted sums ------------------------------------------------------------------------------
def partial(node: str):
    return instantiate(OmegaConf.create(node))


def test_yaml_weighted_sum_terms_are_partials():
    factory = instantiate(OmegaConf.load(LOSS_CONF_DIR / "bce_dice.yaml"))
    assert callable(factory) and callable(factory.keywords["terms"]["dice"]["loss"])


@pytest.mark.parametrize("mode", MODES)
def test_weighted_sum_equals_sum_of_terms(mode):
    first = "{_target_: segsweep.losses.PowerJaccardLoss, _partial_: true, p: 1.5}"
    second = "{_target_: segsweep.losses.FocalLoss, _partial_: true}"
    loss_fn = WeightedSum(mode, IGNORE, terms={
        "pj": {"loss": partial(first), "weight": 0.3},
        "focal": {"loss": partial(second), "weight": 2.0},
    })
    logits, target = random_batch(mode)
    pj = PowerJaccardLoss(mode, p=1.5, ignore_index=IGNORE)(logits, target)
    focal = smp.losses.FocalLoss(mode, ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(loss_fn(logits, target), 0.3 * pj + 2.0 * focal)
    assert set(loss_fn.last_terms) == {"pj", "focal"}
    torch.testing.assert_close(loss_fn.last_terms["pj"], pj)
    torch.testing.assert_close(loss_fn.last_terms["focal"], focal)


def test_yaml_weighted_sum_with_overridden_weights():
    node = OmegaConf.load(LOSS_CONF_DIR / "ce_dice.yaml")
    node.terms.dice.weight = 0.25
    loss_fn = build_loss(instantiate(node), "multiclass", IGNORE)
    logits, target = random_batch("multiclass")
    expected = (CrossEntropy("multiclass", IGNORE)(logits, target)
                + 0.25 * smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)(logits, target))
    torch.testing.assert_close(loss_fn(logits, target), expected)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"a": -1.0, "b": 1.0}, "term 'a': weight must be finite and >= 0"),
        ({"a": 1.0, "b": math.nan}, "term 'b': weight must be finite and >= 0"),
        ({"a": math.inf, "b": 1.0}, "term 'a': weight must be finite and >= 0"),
        ({"a": "heavy", "b": 1.0}, "term 'a': weight must be a number"),
        ({"a": 0.0, "b": 0}, "weights are all zero"),
    ],
)
def test_weighted_sum_rejects_bad_weights(weights, match):
    dice = partial("{_target_: segmentation_models_pytorch.losses.DiceLoss, _partial_: true}")
    terms = {name: {"loss": dice, "weight": w} for name, w in weights.items()}
    with pytest.raises(ValueError, match=match):
        WeightedSum("binary", IGNORE, terms=terms)


def test_weighted_sum_rejects_malformed_terms():
    dice = partial("{_target_: segmentation_models_pytorch.losses.DiceLoss, _partial_: true}")
    with pytest.raises(ValueError, match="at least one term"):
        WeightedSum("binary", IGNORE, terms={})
    with pytest.raises(ValueError, match="term 'dice' needs exactly the keys"):
        WeightedSum("binary", IGNORE, terms={"dice": {"loss": dice}})
