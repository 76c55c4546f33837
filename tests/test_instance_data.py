"""Instance datasets: label-image folders, connected components, COCO JSON, tiles; clear errors."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import tifffile
from conftest import DATASETS, requires_dataset
from PIL import Image
from pycocotools import mask as mask_utils

from segsweep.data.instances import CocoInstances, InstanceFolderDataset, TiledInstances
from segsweep.train import build_datamodule

# conftest's FAST list is for the synthetic data; real data configs compose without it.
REAL = ["trainer=cpu", "logger=none", "callbacks=none"]


def write_folder(root, labels: np.ndarray, stem: str = "a"):
    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    Image.fromarray(np.full(labels.shape, 100, np.uint8)).save(root / "images" / f"{stem}.png")
    tifffile.imwrite(root / "labels" / f"{stem}.tif", labels)


def two_objects() -> np.ndarray:
    labels = np.zeros((16, 16), np.uint16)
    labels[2:6, 2:6], labels[2:6, 6:12] = 700, 3  # touching, arbitrary ids
    return labels


def test_label_folder_keeps_objects_and_augments_them_with_the_image(tmp_path):
    write_folder(tmp_path, two_objects())
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    item = InstanceFolderDataset(tmp_path, "images", "labels", in_channels=1, transform=flip)[0]
    instances = item["instances"].numpy()
    assert set(np.unique(instances)) == {0, 3, 700}
    np.testing.assert_array_equal(instances, two_objects()[:, ::-1])
    np.testing.assert_array_equal(item["mask"].numpy(), instances > 0)


def test_components_of_a_binary_mask(tmp_path):
    mask = np.full((12, 12), 255, np.uint8)
    mask[:, 5] = 0  # a membrane splits the interior in two; a 2-px speck is dropped by min_size
    mask[0:2, 0:1] = 255
    write_folder(tmp_path, mask)
    ds = InstanceFolderDataset(
        tmp_path,
        "images",
        "labels",
        source="components",
        foreground_value=255,
        min_size=3,
        in_channels=1,
    )
    assert ds.load(0).instances.max() == 2
    bad = InstanceFolderDataset(
        tmp_path, "images", "labels", source="components", foreground_value=7, in_channels=1
    )
    with pytest.raises(ValueError, match="foreground_value=7"):
        bad.load(0)


def test_label_folder_errors_name_the_file(tmp_path):
    write_folder(tmp_path, two_objects())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(FileNotFoundError, match="lonely.png"):
        InstanceFolderDataset(tmp_path, "images", "labels", in_channels=1)
    with pytest.raises(ValueError, match="source='flow'"):
        InstanceFolderDataset(tmp_path, "images", "labels", source="flow")


def coco_file(tmp_path, annotations=None, images=None, categories=None) -> str:
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "img.png")
    square = np.zeros((10, 12), np.uint8, order="F")
    square[5:9, 6:10] = 1
    rle = mask_utils.encode(square)
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": images or [{"id": 1, "file_name": "img.png", "height": 10, "width": 12}],
        "categories": categories or [{"id": 7, "name": "cell"}, {"id": 9, "name": "debris"}],
        "annotations": annotations
        or [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]],
                "area": 12,
            },
            {"id": 2, "image_id": 1, "category_id": 9, "segmentation": rle, "area": 16},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return "ann.json"


def test_coco_polygons_and_rle(tmp_path):
    ds = CocoInstances(tmp_path, coco_file(tmp_path), images=".")
    assert ds.class_names == ["background", "cell", "debris"]
    sample = ds.load(0)
    assert sample.instances.max() == 2 and sample.image.shape == (10, 12, 3)
    assert set(np.unique(sample.mask)) == {0, 1, 2}
    assert (sample.mask[6, 7], sample.mask[2, 2]) == (2, 1)
    only = CocoInstances(tmp_path, "ann.json", images=".", categories=["debris"])
    assert only.class_names == ["background", "debris"] and only.load(0).instances.max() == 1


def test_coco_errors_name_file_key_and_value(tmp_path):
    missing = [{"id": 1, "file_name": "nope.png", "height": 10, "width": 12}]
    ds = CocoInstances(tmp_path, coco_file(tmp_path, None, images=missing), images=".")
    with pytest.raises(FileNotFoundError, match=r"image id 1 .*nope.png"):
        ds.load(0)
    out = [
        {
            "id": 11,
            "image_id": 1,
            "category_id": 7,
            "segmentation": [[1, 1, 30, 1, 5, 4]],
            "area": 3,
        }
    ]
    with pytest.raises(ValueError, match=r"ann.json: annotation id 11 .*\(30.0, 1.0\) is outside"):
        CocoInstances(tmp_path, coco_file(tmp_path, out), images=".").load(0)
    unknown = [
        {
            "id": 12,
            "image_id": 1,
            "category_id": 42,
            "segmentation": [[1, 1, 3, 1, 3, 3]],
            "area": 2,
        }
    ]
    with pytest.raises(ValueError, match="annotation id 12 has unknown category_id 42"):
        CocoInstances(tmp_path, coco_file(tmp_path, unknown), images=".")
    with pytest.raises(ValueError, match=r"categories \['virus'\]"):
        CocoInstances(tmp_path, coco_file(tmp_path, None), images=".", categories=["virus"])
    with pytest.raises(FileNotFoundError, match="other.json"):
        CocoInstances(tmp_path, "other.json")


@requires_dataset("dsb2018_nuclei_sample")
def test_dsb2018_quadrants(make_cfg):
    cfg = make_cfg("experiment=instance_dsb2018", "augment.crop_size=64", *REAL, fast=False)
    datamodule = build_datamodule(cfg)
    train, val = datamodule.build("train"), datamodule.build("val")
    assert len(val) == 1 and len(train) == 3 * 16
    item = val[0]
    assert item["image"].shape == (1, 256, 256) and item["instances"].max() > 0
    assert train[0]["image"].shape == (1, 64, 64)
    with pytest.raises(ValueError, match="tiles \\[4\\]"):
        TiledInstances(DATASETS / "dsb2018_nuclei_sample", "img2d.tif", "mask2d.tif", tiles=[4])


@requires_dataset("isbi2012")
def test_isbi2012_instances(make_cfg):
    cfg = make_cfg("experiment=instance_isbi2012", "augment.crop_size=64", *REAL, fast=False)
    assert cfg.task.rand_vi and cfg.optimized_metric == "val/ap50"
    datamodule = build_datamodule(cfg)
    sample = datamodule.build("val").load(0)
    assert len(datamodule.build("train")) == 18 and sample.instances.max() > 20
    assert (sample.instances[sample.mask == 0] == 0).all()
