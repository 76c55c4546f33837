"""Models: every conf/model config builds and trains a step, output strides, local encoder weights,
errors, and the from-scratch ClassicUNet / SegNet. CPU, tiny encoders, 64x64 inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from segsweep.models import ARCHITECTURES, ClassicUNet, SegNet, build_maskrcnn, build_smp_model

CONF = Path(__file__).resolve().parents[1] / "conf"
# Mask R-CNN is a whole task (conf/model/maskrcnn*.yaml set the task too): its builder below, its
# training in tests/test_instance_tasks.py. The 3D U-Net takes volumes: tests/test_volumes.py.
MODEL_CONFIGS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                       if not p.stem.startswith("maskrcnn") and p.stem != "classic_unet3d")
ENCODER_CONFIGS = sorted(p.stem for p in (CONF / "encoder").glob("*.yaml"))
TINY = "tu-mobilenetv3_small_050"
# architectures that cannot take TINY, and the tiny encoder they take instead
ENCODER_FOR = {"dpt": "tu-test_vit"}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def model_from_config(model: str, encoder: str = TINY, **overrides) -> torch.nn.Module:
    """conf/model/<model>.yaml + conf/encoder/<encoder>.yaml, completed as the task does."""
    cfg = OmegaConf.create(
        {
            "model": OmegaConf.load(CONF / "model" / f"{model}.yaml"),
            "encoder": OmegaConf.load(CONF / "encoder" / f"{encoder}.yaml"),
        }
    )
    cfg.model.update(overrides)
    return instantiate(cfg.model)(in_channels=3, classes=2)


def round_up(size: int, stride: int) -> int:
    return -(-size // stride) * stride


def test_every_smp_architecture_has_a_config():
    assert set(ARCHITECTURES) <= set(MODEL_CONFIGS)
    assert {"classic_unet", "segnet"} <= set(MODEL_CONFIGS)


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_trains_a_step_and_pads(name):
    torch.manual_seed(0)
    model = model_from_config(name, ENCODER_FOR.get(name, TINY))
    stride = model.output_stride
    assert isinstance(stride, int) and stride > 1
    size = round_up(max(64, model.min_input_size), stride)

    x = torch.randn(2, 3, size, size)
    target = torch.randint(0, 2, (2, size, size))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (2, 2, size, size)
    F.cross_entropy(logits, target).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))

    # an odd-sized image padded up to the output stride goes through; crop back to its size
    height, width = size - 5, size + 3
    odd = torch.randn(1, 3, height, width)
    padded = F.pad(odd, (0, -width % stride, 0, -height % stride))
    model.eval()
    with torch.no_grad():
        out = model(padded)[..., :height, :width]
    assert out.shape == (1, 2, height, width)


@pytest.mark.parametrize("encoder", ENCODER_CONFIGS)
def test_encoder_configs_compose_with_hydra_and_build(encoder):
    """File names like tu-mobilenetv3_small_050 are valid Hydra choices; name matches file."""
    model = "dpt" if "vit" in encoder else "fpn"  # plain ViTs work with DPT only
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=None, overrides=[f"+model={model}", f"+encoder={encoder}"])
    GlobalHydra.instance().clear()
    assert cfg.encoder.name == encoder
    assert cfg.model.encoder_weights is None and cfg.model.weights_path is None  # offline-first
    net = instantiate(cfg.model)(in_channels=3, classes=2)
    assert net.encoder is not None


@pytest.mark.parametrize(
    ("arch", "encoder", "stride", "min_size"),
    [
        ("unet", TINY, 32, 32),
        ("pspnet", TINY, 8, 8),  # encoder depth 3
        ("deeplabv3", TINY, 8, 8),  # dilated to stride 8
        ("deeplabv3plus", TINY, 16, 16),
        ("pan", TINY, 16, 128),  # FPA pools the stride-16 feature 3 more times
        ("segformer", "mit_b0", 32, 32),
        ("deeplabv3", "mit_b0", 8, 32),  # MiT's 8x8 key-reduction conv at 1/4 scale
        ("dpt", "tu-test_vit", 32, 32),  # patch 16, but the decoder builds a 1/32 level
    ],
)
def test_output_stride_is_derived(arch, encoder, stride, min_size):
    kwargs = {"dynamic_img_size": True} if arch == "dpt" else {}
    model = build_smp_model(arch, 3, 2, encoder, **kwargs)
    assert (model.output_stride, model.min_input_size) == (stride, min_size)


# -- local encoder weights ------------------------------------------------------------------------
def tiny(**kwargs) -> torch.nn.Module:
    return build_smp_model("linknet", 3, 2, TINY, **kwargs)


def perturbed_encoder_state(model) -> dict[str, torch.Tensor]:
    """The encoder's state dict with every float tensor moved, so loading it is observable."""
    return {
        k: v + 0.5 if v.is_floating_point() else v.clone()
        for k, v in model.encoder.state_dict().items()
    }


@pytest.mark.parametrize(
    "layout", ["plain.pth", "module.pt", "lightning.ckpt", "encoder.safetensors"]
)
def test_local_encoder_weights_are_loaded(tmp_path, layout):
    saved = perturbed_encoder_state(tiny())
    path = tmp_path / layout
    if layout == "plain.pth":
        torch.save(saved, path)
    elif layout == "module.pt":
        torch.save({f"module.{k}": v for k, v in saved.items()}, path)
    elif layout == "lightning.ckpt":  # a whole model under "state_dict", decoder keys included
        whole = {f"net.encoder.{k}": v for k, v in saved.items()} | {
            "net.decoder.x.weight": torch.ones(1)
        }
        hparams = {"model": OmegaConf.create({"arch": "linknet"})}  # needs full unpickling
        torch.save({"state_dict": whole, "epoch": 3, "hyper_parameters": hparams}, path)
    else:
        save_file({f"encoder.{k}": v.contiguous() for k, v in saved.items()}, str(path))

    loaded = tiny(weights_path=str(path)).encoder.state_dict()
    fresh = tiny().encoder.state_dict()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    assert any(not torch.equal(fresh[k], v) for k, v in saved.items() if v.is_floating_point())


def test_local_encoder_weights_through_config(tmp_path):
    saved = perturbed_encoder_state(tiny())
    torch.save(saved, tmp_path / "enc.pth")
    model = model_from_config("linknet", weights_path=str(tmp_path / "enc.pth"))
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in saved.items())


def test_wrong_key_names_file_and_keys(tmp_path):
    state = tiny().encoder.state_dict()
    key = next(iter(state))
    state["renamed." + key] = state.pop(key)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        tiny(weights_path=str(path))
    message = str(err.value)
    assert str(path) in message and key in message and "renamed." + key in message
    assert "1 missing" in message and "1 unexpected" in message


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="encoder.weights_path") as err:
        tiny(weights_path=str(path))
    assert str(path) in str(err.value)


def test_weights_and_weights_path_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        tiny(encoder_weights="imagenet", weights_path=str(tmp_path / "enc.pth"))


# -- Mask R-CNN: torchvision's network, weights through the same loader ----------------------------
def test_default_maskrcnn_is_torchvisions_own_network():
    """model=maskrcnn's defaults build what torchvision's MaskRCNN builds around a ResNet-FPN
    (its default heads, 5 levels), module for module and, from one seed, weight for weight."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    body = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=torch.nn.BatchNorm2d,
                               trainable_layers=5)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    reference = MaskRCNN(body, num_classes=3, rpn_anchor_generator=anchors, box_detections_per_img=300)
    torch.manual_seed(0)
    net = build_maskrcnn(in_channels=3, classes=3, backbone="resnet18")
    mine, theirs = net.state_dict(), reference.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert repr(net.roi_heads) == repr(reference.roi_heads) and repr(net.rpn) == repr(reference.rpn)


def test_maskrcnn_config_sizes_and_errors():
    light = build_maskrcnn(in_channels=1, classes=4, backbone="resnet18", returned_layers=[1, 2, 3],
                           fpn_channels=32, box_head_size=64, mask_head_channels=[32], anchor_sizes=[16, 32, 64, 128])
    assert light.backbone.body.conv1.in_channels == 1 and light.backbone.out_channels == 32
    assert not hasattr(light.backbone.body, "layer4")
    light.eval()
    with torch.no_grad():
        (detections,) = light([torch.randn(1, 48, 80)])
    assert set(detections) == {"boxes", "labels", "scores", "masks"}
    with pytest.raises(ValueError, match="one size per pyramid level: 4"):
        build_maskrcnn(in_channels=3, classes=2, returned_layers=[1, 2, 3])
    with pytest.raises(ValueError, match="'tu-mobilenetv3_small_050' is not one of"):
        build_maskrcnn(in_channels=3, classes=2, backbone=TINY)


def small_maskrcnn(**kwargs) -> torch.nn.Module:
    return build_maskrcnn(in_channels=3, classes=3, backbone="resnet18", returned_layers=[1, 2], fpn_channels=16,
                          box_head_size=32, mask_head_channels=[16], anchor_sizes=[16, 32, 64], **kwargs)


def test_maskrcnn_weights_from_a_whole_network_or_a_resnet(tmp_path):
    """One loader for encoders and Mask R-CNN (segsweep.models.weights): a whole network's state
    (here a Lightning checkpoint, keys under "net."), or a ResNet's into the backbone; tensors of
    other shapes are skipped with a warning naming them."""
    saved = {k: v + 0.5 if v.is_floating_point() else v for k, v in small_maskrcnn().state_dict().items()}
    torch.save({"state_dict": {f"net.{k}": v for k, v in saved.items()}}, tmp_path / "whole.ckpt")
    loaded = small_maskrcnn(weights_path=str(tmp_path / "whole.ckpt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())

    import torchvision

    resnet = {k: v + 0.5 if v.is_floating_point() else v for k, v in torchvision.models.resnet18().state_dict().items()}
    torch.save(resnet, tmp_path / "resnet18.pth")
    with pytest.warns(UserWarning, match=r"tensors not loaded into the Mask R-CNN .*fc\.weight"):
        net = small_maskrcnn(weights_path=str(tmp_path / "resnet18.pth"))
    body = net.backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], resnet["conv1.weight"]) and torch.equal(
        body["layer2.0.conv1.weight"], resnet["layer2.0.conv1.weight"])

    with pytest.raises(FileNotFoundError, match="encoder.weights_path"):
        small_maskrcnn(weights_path=str(tmp_path / "nope.pth"))
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "unrelated.pth")
    with pytest.raises(ValueError, match="no tensor of .* fits the Mask R-CNN"):
        small_maskrcnn(weights_path=str(tmp_path / "unrelated.pth"))


# -- errors -----------------------------------------------------------------------------------
def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="nosuchnet") as err:
        build_smp_model("nosuchnet", 3, 2, TINY)
    assert all(name in str(err.value) for name in ("unet", "segformer", "dpt", "upernet"))


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(ValueError, match="resnet9000") as err:
        build_smp_model("unet", 3, 2, "resnet9000")
    assert "resnet18" in str(err.value) and "mit_b0" in str(err.value) and "'tu-'" in str(err.value)
    with pytest.raises(ValueError, match="Did you mean 'tu-mobilenetv3_small_050'"):
        build_smp_model("unet", 3, 2, "mobilenetv3_small_050")
    with pytest.raises(ValueError, match="tu-no_such_timm_model"):
        build_smp_model("unet", 3, 2, "tu-no_such_timm_model")


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs", "reason"),
    [
        ("unetplusplus", "mit_b0", {}, "not support"),
        ("linknet", "mit_b0", {}, "not supported for Linknet"),
        ("fpn", "mit_b0", {"encoder_depth": 4}, "only encoder_depth=5"),
        ("dpt", "resnet18", {}, "Only Timm encoders"),
        ("dpt", TINY, {"dynamic_img_size": True}, "dynamic_img_size"),  # as conf/model/dpt.yaml
        ("unet", "tu-test_vit", {}, "use it with arch dpt"),
        ("upernet", "resnet18", {"encoder_depth": 2}, "cannot be less than 3"),
        ("deeplabv3", "xception", {}, "dilated mode"),
    ],
)
def test_incompatible_arch_and_encoder(arch, encoder, kwargs, reason):
    with pytest.raises(ValueError) as err:
        build_smp_model(arch, 3, 2, encoder, **kwargs)
    message = str(err.value)
    assert f"'{arch}'" in message and f"'{encoder}'" in message and reason in message


# -- ClassicUNet and SegNet -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("downsample", "upsample", "batch_norm"),
    list(
        itertools.product(["maxpool", "conv"], ["nearest", "bilinear", "transposed"], [True, False])
    ),
)
def test_classic_unet_options_keep_shape(downsample, upsample, batch_norm):
    model = ClassicUNet(
        3, 2, depth=3, base_width=4, downsample=downsample, upsample=upsample, batch_norm=batch_norm
    )
    assert model.output_stride == 8
    assert model(torch.randn(2, 3, 64, 40)).shape == (2, 2, 64, 40)


def test_classic_unet_matches_paper_size():
    n_params = sum(p.numel() for p in ClassicUNet(3, 2, depth=4, base_width=64).parameters())
    assert abs(n_params - 31e6) < 0.1 * 31e6, n_params


@pytest.mark.parametrize(("option", "value"), [("downsample", "avgpool"), ("upsample", "bicubic")])
def test_classic_unet_rejects_unknown_options(option, value):
    with pytest.raises(ValueError, match=f"{option}='{value}'") as err:
        ClassicUNet(3, 2, **{option: value})
    assert "maxpool" in str(err.value) or "transposed" in str(err.value)


def test_segnet_shape_and_stride():
    model = SegNet(3, 2, depth=3, base_width=8, convs_per_level=1)
    assert model.output_stride == 8
    assert model(torch.randn(2, 3, 64, 48)).shape == (2, 2, 64, 48)


def test_segnet_unpools_to_the_encoder_max_locations():
    """Each decoder unpooling puts values only where the matching encoder pooling found its max."""
    torch.manual_seed(0)
    model = SegNet(3, 2, depth=2, base_width=4, batch_norm=False).eval()
    pooled, unpooled = [], []
    model.pool.register_forward_hook(lambda m, inp, out: pooled.append(inp[0]))
    model.unpool.register_forward_hook(lambda m, inp, out: unpooled.append(out))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))

    assert len(pooled) == len(unpooled) == 2
    for before_pool, out in zip(pooled, reversed(unpooled), strict=True):  # decoder runs in reverse
        assert out.shape == before_pool.shape
        window_max = F.interpolate(F.max_pool2d(before_pool, 2), scale_factor=2.0, mode="nearest")
        placed = out != 0
        assert placed.any()
        assert (before_pool[placed] == window_max[placed]).all()  # only at max locations
        # at most one value per 2x2 window (the max's position), never spread over the window
        per_window = F.avg_pool2d(placed.float(), 2) * 4
        assert per_window.max() <= 1
