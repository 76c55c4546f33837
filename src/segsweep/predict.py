"""``segsweep-predict ckpt_path=... input=<dir|file> output=<dir>``: label maps for new images.

Everything about the model comes from the checkpoint (task, classes, input channels, the
``augment.eval`` normalisation it was trained with), so a user gives nothing twice. Per input file
``<stem>`` it writes to ``output``: ``<stem>.png`` (class ids as uint8, or instance ids as uint16
for instance checkpoints), ``<stem>_probs.npy`` with ``save_probs=true`` (float32 ``(K, H, W)``, the
maps the labels were made from; channel names in the index), ``<stem>_overlay.png`` with
``overlays=true``, and one ``predictions.json`` index. A file that cannot be read or does not fit
the model (e.g. grey for an RGB model) is skipped with a warning so the others still get
predicted; the index lists it and the command then fails (exit code 1) naming every such file.
A 3D checkpoint (trained on volumes) takes ``.npy`` / multi-page ``.tif`` volumes and writes
``<stem>.tif``, one page of class ids per slice (``tile_size`` then tiles in 3D).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
import tifffile
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.progress import track

from segsweep.config import CONFIG_DIR
from segsweep.data.folder import IMAGE_SUFFIXES, read_image, read_slices, slice_stack
from segsweep.data.preprocess import Preprocess as InputPipeline
from segsweep.data.volumes import VOLUME_SUFFIXES, read_volume
from segsweep.inference import Predictor
from segsweep.resolvers import register as register_resolvers
from segsweep.tasks import InstanceSegmentationTask, InstanceTask, PerPixelTask, SegmentationTask, load_task
from segsweep.visualize import overlay, to_display

register_resolvers()  # what the checkpoints' configs use, before Hydra composes predict's
log = logging.getLogger(__name__)
INDEX_FILE = "predictions.json"


class PredictionError(RuntimeError):
    """Some input files were skipped; the others were predicted."""


def list_inputs(path: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"input={path}: no images ({'/'.join(suffixes)}) in it")
    clashes = [stem for stem, n in Counter(p.stem for p in files).items() if n > 1]
    if clashes:  # a.png and a.tif would write the same a.png
        raise ValueError(f"input={path}: files share a stem, outputs would collide: {clashes[:5]}")
    return files


class Preprocess:
    """Input file -> ``(image as read, the network's input (1, C', H, W))``.

    Reading files is predict's part; what becomes of an image after that is the checkpoint's data
    side (``segsweep.data.preprocess.Preprocess``, built from the run's ``data`` and
    ``augment.eval`` configs alone): the same steps, to the bit, as its datasets' evaluation input.
    2.5D checkpoints read each slice's neighbours from its folder (its images in stem order, as
    the training folder's); the image returned for overlays is then the centre slice.
    """

    def __init__(self, task: SegmentationTask):
        run = task.hparams.run_config or {}
        if not (run.get("augment") or {}).get("eval"):
            raise ValueError("the checkpoint holds no augment.eval config to normalise images with")
        self.data = InputPipeline.from_config(run.get("data") or {}, run["augment"]["eval"])
        # Channels of one image as read: the model's, less the coordinates, over the 2k+1 slices.
        slices = 2 * self.data.context_slices + 1
        self.channels = (task.hparams.in_channels - 2 * self.data.add_coords) // slices
        # 3D checkpoints take volumes: .npy or multi-page .tif, labels written as <stem>.tif.
        self.volumes = self.data.volumetric
        self.suffixes = VOLUME_SUFFIXES if self.volumes else IMAGE_SUFFIXES
        self.stacks: dict[Path, list[str]] = {}  # 2.5D: each input folder's image names in stem order

    def volume(self, path: Path) -> tuple[np.ndarray, torch.Tensor]:
        """Volume file -> ``(raw (D, H, W, C), normalised (1, C, D, H, W))``."""
        image = read_volume(path)
        image = image[..., None] if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[-1] != self.channels:
            raise ValueError(f"{path} has shape {image.shape} but the model takes volumes (D, H, W) "
                             f"of {self.channels} channel(s)")
        return image, torch.from_numpy(self.data.volume(self.data.scale(image), name=path.stem)[0])[None]

    def read(self, path: Path) -> np.ndarray:
        """The image file ``(H, W, C)``; 2.5D: with its neighbours' channels (``read_slices``)."""
        if self.data.context_slices:
            stack = self.stacks.setdefault(path.parent, [p.name for p in slice_stack(path.parent)])
            k = self.data.context_slices
            image = read_slices([path.parent / name for name in stack], stack.index(path.name), k)
            channels = image.shape[2] // (2 * k + 1)
        else:
            image = read_image(path)
            image = image[..., None] if image.ndim == 2 else image
            if image.shape[2] == self.channels + 1 and self.channels in (1, 3):
                image = image[..., :-1]  # grey+alpha or RGBA PNG: the alpha carries no image content
            channels = image.shape[2]
        if channels != self.channels:
            kinds = {1: "grey", 3: "RGB"}
            raise ValueError(f"{path} has {channels} channel(s) "
                             f"({kinds.get(channels, 'other')}) but the model takes "
                             f"{self.channels} ({kinds.get(self.channels, 'other')})")
        return image

    def __call__(self, path: Path) -> tuple[np.ndarray, torch.Tensor]:
        if self.volumes:
            return self.volume(path)
        image = self.data.scale(self.read(path))
        inputs, _ = self.data(image, name=path.stem)
        if inputs.shape[1:] != image.shape[:2]:
            raise ValueError(f"the checkpoint's augment.eval resizes {path}: predict cannot")
        centre = self.data.context_slices * self.channels
        return image[..., centre:centre + self.channels], torch.from_numpy(inputs)[None]


def predict_one(task: SegmentationTask, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One image ``(1, C, H, W)`` -> (label image, probability maps or None, index entry)."""
    names = task.class_names
    prediction = task.predict(images)
    probs = None if prediction.probs is None else prediction.probs[0].cpu().numpy()
    if prediction.instances is None:
        labels = prediction.labels[0].cpu().numpy()
        counts = np.bincount(labels.ravel(), minlength=len(names))
        pixels = {names[i]: int(n) for i, n in enumerate(counts) if n}  # pixels per class
        return labels, probs, {"classes": pixels}
    found = prediction.instances[0]
    if found.labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"{found.labels.max()} instances do not fit a 16-bit label image")
    counts = Counter(names[c] for c in found.classes.tolist())
    return found.labels, probs, {"instances": len(found.classes), "classes": dict(counts)}


def prob_channels(task: SegmentationTask) -> list[str]:
    """Names of the ``<stem>_probs.npy`` channels (``logits_to_probs``)."""
    if isinstance(task, InstanceSegmentationTask):  # object maps, then the object classes if several
        return [*task.map_names, *(task.class_names[1:] if task.num_classes > 1 else [])]
    return list(task.class_names)


def display(image: np.ndarray) -> np.ndarray:
    """The input as ``(H, W, 3)`` uint8 to draw on (other bit depths stretched to their range)."""
    if image.dtype != np.uint8:
        return to_display(image.transpose(2, 0, 1))
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def output_files(stem: str, output: Path) -> list[Path]:
    """Every file a prediction of ``<stem>`` may write into ``output``."""
    return [output / f"{stem}{suffix}" for suffix in (".png", ".tif", "_probs.npy", "_overlay.png")]


def refuse_overwriting_inputs(files: list[Path], output: Path) -> None:
    """Raise, naming them, if writing into ``output`` would replace any input image."""
    inputs = {path.resolve() for path in files}
    written = [output / INDEX_FILE, *(f for path in files for f in output_files(path.stem, output))]
    clash = sorted(str(path) for path in written if path.resolve() in inputs)
    if clash:
        raise ValueError(f"output={str(output)!r} would overwrite input image(s) {clash[:5]}: "
                         "choose an output folder apart from the inputs")


def prediction_dir(input: str, output: str) -> str:
    """``hydra.run.dir`` of a prediction: ``output``, once it is known not to overwrite any input
    (any readable suffix: the checkpoint, which decides, is not loaded yet). Checked while Hydra
    resolves its run dir, so a refused prediction writes nothing, not even Hydra's .hydra/."""
    refuse_overwriting_inputs(list_inputs(input, tuple({*IMAGE_SUFFIXES, *VOLUME_SUFFIXES})), Path(output))
    return output


OmegaConf.register_new_resolver("prediction_dir", prediction_dir, replace=True)


def predict(cfg: DictConfig | dict) -> dict:
    """Predict every image of ``cfg.input`` into ``cfg.output``; returns the index it writes."""
    cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
    if not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no such checkpoint file")
    predictor = Predictor.from_config(cfg)
    device = cfg.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    task = load_task(cfg.ckpt_path, predictor=predictor).to(device).eval()  # refuses what it cannot run
    preprocess, output = Preprocess(task), Path(cfg.output)
    files = list_inputs(cfg.input, preprocess.suffixes)
    refuse_overwriting_inputs(files, output)
    if cfg.get("overlays") and preprocess.volumes:
        raise ValueError("overlays=true draws 2D images; this checkpoint predicts volumes")
    if cfg.get("save_probs") and not isinstance(task, PerPixelTask):
        raise ValueError(f"save_probs=true: {type(task).__name__} gives no per-pixel maps to save "
                         "(they come from the binary, semantic and bottom-up instance tasks)")
    instance = isinstance(task, InstanceTask)
    # Class ids fit 8 bits for up to 256 classes; instance ids need 16 (up to 65535 objects).
    label_dtype = np.uint16 if instance or len(task.class_names) > 256 else np.uint8
    output.mkdir(parents=True, exist_ok=True)
    entries, failed = [], []
    with torch.inference_mode():
        for path in track(files, description=f"predicting {len(files)} image(s)"):
            started = time.perf_counter()
            try:
                image, images = preprocess(path)
            except ValueError as err:  # unreadable or wrong channels: name it, go on with the rest
                log.warning("skipped: %s", err)
                failed.append({"file": str(path), "error": str(err)})
                continue
            labels, probs, found = predict_one(task, images.to(device))
            label_file = f"{path.stem}.tif" if preprocess.volumes else f"{path.stem}.png"
            if preprocess.volumes:  # a multi-page TIFF, one page per slice
                tifffile.imwrite(output / label_file, labels.astype(label_dtype))
            else:
                Image.fromarray(labels.astype(label_dtype)).save(output / label_file)
            if cfg.get("save_probs"):
                np.save(output / f"{path.stem}_probs.npy", probs.astype(np.float32))
            if cfg.get("overlays"):
                shown = overlay(display(image), labels, instance=instance)
                Image.fromarray(shown).save(output / f"{path.stem}_overlay.png")
            entries.append({"file": str(path), "labels": label_file,
                            "size": list(labels.shape), **found,
                            "seconds": round(time.perf_counter() - started, 4)})
    index = {"ckpt_path": str(cfg.ckpt_path), "task": type(task).__name__,
             "class_names": list(task.class_names), **predictor.options(),
             "device": str(device), "label_dtype": np.dtype(label_dtype).name,
             "prob_channels": prob_channels(task) if cfg.get("save_probs") else None,
             "files": entries, "failed": failed}
    (output / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    if failed:
        raise PredictionError(f"{len(failed)} of {len(files)} file(s) skipped (listed in "
                              f"{output / INDEX_FILE}): "
                              + "; ".join(f["error"] for f in failed[:10]))
    return index


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
