"""Data pipeline per loader worker at 512 px: images/s, where a sample's time goes, before and after.

For each shipped training pipeline, the same sample keys (``EpochSampler``: index + augmentation
seed) go through the data code of a baseline commit ("before", read with ``git show``) and the
current code ("after"), alternating in one process, round after round; figures are medians over
the rounds. Every sample is checked to be bit-identical between the two.

- ``default``: ``augment=default`` (crop, 8 orientations, brightness/contrast, Normalize), 512 px
  crops of 640 px synthetic shapes rendered once before timing (rendering is the generator's
  cost, not the pipeline's);
- ``em`` / ``em256``: ``augment=em`` (+ elastic, p 0.3) on the ISBI 2012 slices (512 x 512 grey
  PNG, decoded per sample as training does), crop 512 (the whole slice) / 256 (the shipped crop);
- ``volume``: ``augment=volume``, 16 x 512 x 512 crops of a 32 x 512 x 512 synthetic volume
  (loaded once, as ``VolumeDataset`` keeps volumes); its images/s count crops, its slices/s 16 each.

Parts of a sample, in the worker (one OpenCV and one torch thread, as loader workers run):
load (decode or copy), each transform of the pipeline by kind (crop, flips, colour, elastic,
normalise), the pipeline's own work (stacking masks, checks), to-tensor (the rest of
``__getitem__``), and per batch of ``--batch``: collate into the shared memory the batch crosses to
the training process in, and, on a GPU machine, pinning (done by the training process).
"loader, 1 worker" runs a real ``DataLoader`` with one worker. ``--workers`` adds the after code's
loader throughput with more workers, ``--model`` the training rate of U-Net-R34 on a GPU (bf16,
channels-last), and the workers needed to feed it.

    python scripts/bench_data.py --rounds 5                          # default, em, em256, volume
    python scripts/bench_data.py --pipelines default --rounds 7 --samples 64
    python scripts/bench_data.py --workers 1,2,4,8,12 --model        # on a GPU machine
"""

from __future__ import annotations

import argparse
import functools
import importlib
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import defaultdict
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.transforms_interface import BasicTransform
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data._utils import worker as worker_state

from segsweep.data.preprocess import finish_batch
from segsweep.data.sampling import EpochSampler
from segsweep.data.synthetic import render_shapes
from segsweep.resolvers import register

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["base", "sampling", "datamodule", "folder", "instances", "synthetic", "volumes", "synthetic3d"]
SETUPS = {  # pipeline -> Hydra overrides (the dataset is built by ``make_dataset``)
    "default": ["augment=default", "augment.crop_size=512"],
    "em": ["data=isbi2012", "augment=em", "augment.crop_size=512"],
    "em256": ["data=isbi2012", "augment=em", "augment.crop_size=256"],
    "volume": ["data=synthetic3d", "augment=volume", "augment.crop_size=512", "augment.crop_depth=16"],
}
PARTS = {"RandomCrop": "crop", "RandomCrop3D": "crop", "PadIfNeeded3D": "crop", "SquareSymmetry": "flips",
         "HorizontalFlip": "flips", "RandomBrightnessContrast": "colour", "RandomGamma": "colour",
         "ElasticTransform": "elastic", "Normalize": "normalise", "PlanarNormalize": "normalise"}
ROWS = ["load", "crop", "flips", "colour", "elastic", "normalise", "pipeline other", "seeding + to tensor",
        "collate + shared memory", "pin"]
BATCH = {"volume": 2}  # the synthetic3d batch (a 16 x 512 x 512 float32 crop is 16 MB); others: --batch


def baseline(rev: str, source_dir: str | None) -> types.SimpleNamespace:
    """The ``segsweep.data`` modules of ``rev`` (or of files in ``source_dir``), importable beside
    the current ones as ``baseline_data.<name>``."""
    found = {}
    for name in MODULES:
        if source_dir:
            path = Path(source_dir) / f"{name}.py"
            if not path.is_file():
                continue
            source = path.read_text()
        else:
            done = subprocess.run(["git", "show", f"{rev}:src/segsweep/data/{name}.py"], cwd=ROOT,
                                  capture_output=True, text=True)
            if done.returncode:
                continue
            source = done.stdout
        source = re.sub(r"\bsegsweep\.data\.(\w+)",
                        lambda m: f"baseline_data.{m.group(1)}" if m.group(1) in MODULES else m.group(0), source)
        module = types.ModuleType(f"baseline_data.{name}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
        found.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    return types.SimpleNamespace(**found)


def current() -> types.SimpleNamespace:
    """The working tree's ``segsweep.data`` modules, as ``baseline`` gives the baseline's."""
    found = {}
    for name in MODULES:
        found.update({k: v for k, v in vars(importlib.import_module(f"segsweep.data.{name}")).items()
                      if not k.startswith("_")})
    return types.SimpleNamespace(**found)


class Clock:
    """Seconds per part of the samples being made: albumentations' transform and Compose calls
    are timed by their class (both versions alike), the dataset's ``load`` by the dataset."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._call, self._compose = BasicTransform.__call__, A.Compose.__call__
        clock = self

        def transform_call(transform, *args, **kwargs):
            start = time.perf_counter()
            try:
                return clock._call(transform, *args, **kwargs)
            finally:
                name = type(transform).__name__
                clock.seconds[PARTS.get(name, name)] += time.perf_counter() - start

        def compose_call(pipeline, *args, **kwargs):
            start = time.perf_counter()
            try:
                return clock._compose(pipeline, *args, **kwargs)
            finally:
                clock.seconds["pipeline"] += time.perf_counter() - start

        BasicTransform.__call__, A.Compose.__call__ = transform_call, compose_call

    def close(self) -> None:
        BasicTransform.__call__, A.Compose.__call__ = self._call, self._compose

    def time_load(self, dataset) -> None:
        load = dataset.load

        def timed(index):
            start = time.perf_counter()
            try:
                return load(index)
            finally:
                self.seconds["load"] += time.perf_counter() - start

        dataset.load = timed


class InWorker:
    """``get_worker_info()`` answers as in loader worker 0, so a collate function does what it
    does there (the current one writes into shared memory)."""

    def __enter__(self):
        worker_state._worker_info = worker_state.WorkerInfo(id=0, num_workers=1, seed=0, dataset=None)

    def __exit__(self, *exc):
        worker_state._worker_info = None


def to_shared_memory(batch: dict) -> None:
    """What putting a batch on a worker's queue costs beyond pickling: tensors not yet in shared
    memory are copied there (``Tensor.share_memory_``)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and not value.is_shared():
            value.share_memory_()


def stand_in_stack(folder: Path, slices: int = 24, size: int = 512) -> Path:
    """ISBI-like slices where the real ones are not at hand: grey PNG images and {0, 255} masks."""
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(slices):
        image, semantic, _ = render_shapes((9, i), size)
        Image.fromarray(image[..., 0]).save(folder / "images" / f"{i:02d}.png")
        Image.fromarray(np.where(semantic > 0, 0, 255).astype(np.uint8)).save(folder / "masks" / f"{i:02d}.png")
    return folder


def round_keys(count: int, round_: int, samples: int) -> list[tuple[int, int]]:
    """``samples`` training keys (index, augmentation seed) of consecutive epochs from ``round_``'s."""
    keys: list[tuple[int, int]] = []
    while len(keys) < samples:
        epoch = 1000 * round_ + len(keys) // count
        keys += [tuple(k) for k in EpochSampler(count, seed=0, current_epoch=lambda e=epoch: e)]
    return keys[:samples]


def make_dataset(version, pipeline: str, cfg, transform, samples: int, shared: dict, isbi: Path):
    if pipeline == "default":
        dataset = version.SyntheticShapes(samples, image_size=640, target="binary", seed=0, transform=transform)
        dataset.cache = shared  # rendered once, for both versions (the same cache format)
        for index in range(samples):
            dataset.load(index)
        return dataset
    if pipeline == "volume":
        dataset = version.SyntheticBlobs3D(1, image_size=512, depth=32, samples_per_volume=samples,
                                           transform=transform)
        dataset.load(0)  # rendered once per dataset: volumes are kept, re-cropped every epoch
        return dataset
    args = {k: v for k, v in OmegaConf.to_container(cfg.data.dataset).items() if not k.startswith("_")}
    return version.FolderDataset(isbi, split="all", transform=transform, **args)


def measure_round(datasets: dict, keys: list, batch: int, clock: Clock, pin: bool) -> dict:
    """One round over ``keys`` for each version: ms per image of each part; items (and the
    compact batches, once finished) checked equal to the baseline's."""
    results, items, collated = {}, {}, {}
    for label, (version, dataset) in datasets.items():
        clock.seconds.clear()
        start = time.perf_counter()
        made = [dataset[key] for key in keys]
        total = time.perf_counter() - start
        collate = functools.partial(version.pad_collate, ignore_index=dataset.ignore_index)
        start = time.perf_counter()
        batches = []
        with InWorker():
            for i in range(0, len(made), batch):
                batches.append(collate(made[i : i + batch]))
                to_shared_memory(batches[-1])
        collate_s = time.perf_counter() - start
        pin_s = 0.0
        if pin:
            start = time.perf_counter()
            for one in batches:
                torch.utils.data._utils.pin_memory.pin_memory(one)
            pin_s = time.perf_counter() - start
        s = clock.seconds
        parts = {name: s.get(name, 0.0) for name in ("load", "crop", "flips", "colour", "elastic", "normalise")}
        parts["pipeline other"] = s.get("pipeline", 0.0) - sum(v for k, v in s.items() if k not in ("load", "pipeline"))
        parts["seeding + to tensor"] = total - s.get("load", 0.0) - s.get("pipeline", 0.0)
        parts["collate + shared memory"], parts["pin"] = collate_s, pin_s
        results[label] = {k: 1000 * v / len(keys) for k, v in parts.items()}
        items[label], collated[label] = made, batches
    for before, after in zip(items["before"], items["after"], strict=True):
        for name in ("image", "mask"):
            assert torch.equal(before[name], after[name]), f"sample {before['name']}: {name} differs before/after"
    for before, compact in zip(collated["before"], collated["compact"], strict=True):
        compact = finish_batch(dict(compact))  # what the datamodule does on the device
        for name in ("image", "mask"):
            assert torch.equal(before[name], compact[name]), f"batch {before['name']}: compact {name} differs"
    return results


def loader_rate(version, dataset, keys: list, batch: int, workers: int, pin: bool) -> float:
    """Images/s out of a ``DataLoader`` with ``workers`` workers, its first batch not counted."""

    # Workers inherit main()'s single OpenCV thread (set before OpenCV started any: calling
    # cv2.setNumThreads in a forked worker can deadlock on the pool's lock copied from the parent).
    loader = DataLoader(dataset, batch_size=batch, sampler=keys, num_workers=workers, pin_memory=pin,
                        worker_init_fn=version.seed_worker, prefetch_factor=4,
                        collate_fn=functools.partial(version.pad_collate, ignore_index=dataset.ignore_index))
    count, start = 0, None
    for batch_ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        count += batch_["image"].shape[0]
    return count / (time.perf_counter() - start)


def model_rate(batch: int, size: int, steps: int = 30) -> float:
    """Training images/s of U-Net-R34 on the GPU: bf16 autocast, channels-last, fused AdamW, BCE
    (no ``torch.compile``: its start-up takes minutes)."""
    import segmentation_models_pytorch as smp

    net = smp.create_model("unet", "resnet34", encoder_weights=None, classes=1).cuda()
    net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    images = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    masks = torch.randint(0, 2, (batch, 1, size, size), device="cuda").float()
    torch.backends.cudnn.benchmark = True

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), masks)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


LABELS = {"before": "before", "after": "after", "compact": "after, compact batches (GPU runs)"}


def report(pipeline: str, rounds: list[dict], loader: dict, unit: str) -> dict[str, float]:
    """Prints the pipeline's table; returns images/s per worker per label (the loader's if run)."""
    med = {label: {row: statistics.median(r[label][row] for r in rounds) for row in ROWS} for label in LABELS}
    print(f"\n### {pipeline}: ms per {unit} in a worker (median of {len(rounds)} rounds)\n")
    print("| part | " + " | ".join(LABELS.values()) + " |\n" + "|---" * (len(LABELS) + 1) + "|")
    for row in ROWS:
        if any(med[label][row] for label in med):
            print(f"| {row} | " + " | ".join(f"{med[label][row]:.2f}" for label in LABELS) + " |")
    worker = {label: sum(v for k, v in med[label].items() if k != "pin") for label in LABELS}
    print("| **total in the worker** | " + " | ".join(f"**{worker[label]:.2f}**" for label in LABELS) + " |")
    print(f"| {unit}s/s per worker (1000 / total) | " + " | ".join(f"{1000 / worker[label]:.0f}" for label in LABELS)
          + " |")
    if loader:
        print(f"| loader, 1 worker: {unit}s/s | " + " | ".join(f"{statistics.median(loader[label]):.0f}"
                                                           for label in LABELS) + " |")
        return {label: statistics.median(loader[label]) for label in LABELS}
    return {label: 1000 / worker[label] for label in LABELS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipelines", default=",".join(SETUPS), help=f"comma-separated, from {list(SETUPS)}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=48, help="samples per version per round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--baseline", default="592b1ab", help="git revision of the 'before' code")
    parser.add_argument("--baseline-dir", help="the 'before' data modules as files (where there is no git)")
    parser.add_argument("--isbi", default=os.environ.get("SEGSWEEP_DATASETS", str(ROOT.parent / "shared" / "datasets"))
                        + "/isbi2012", help="ISBI 2012 folder (a stand-in stack is written if it is missing)")
    parser.add_argument("--no-loader", action="store_true", help="skip the 1-worker DataLoader runs")
    parser.add_argument("--workers", default="", help="e.g. 1,2,4,8: after-code loader images/s (default pipeline)")
    parser.add_argument("--model", action="store_true", help="GPU: U-Net-R34 training images/s, workers needed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    register()
    pin = torch.cuda.is_available()
    old, new = baseline(args.baseline, args.baseline_dir), current()
    isbi = Path(args.isbi)
    if not (isbi / "images").is_dir():
        isbi = stand_in_stack(Path(tempfile.mkdtemp()) / "isbi_stand_in")
        print(f"no ISBI 2012 folder at {args.isbi}: a stand-in stack of grey synthetic slices in {isbi}")
    print(f"before: {args.baseline_dir or args.baseline}; after: the working tree. {os.cpu_count()} CPUs, "
          f"pinning {'on ' + torch.cuda.get_device_name() if pin else 'not measured (no GPU)'}; "
          f"{args.samples} samples x {args.rounds} rounds, batch {args.batch}")
    clock, shared, per_worker = Clock(), {}, {}
    try:
        for pipeline in args.pipelines.split(","):
            with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
                cfg = compose("train", overrides=SETUPS[pipeline])
            batch = BATCH.get(pipeline, args.batch)
            samples = args.samples if pipeline != "volume" else max(4 * batch, args.samples // 4)
            datasets = {}
            for label, version in (("before", old), ("after", new), ("compact", new)):
                transform = instantiate(cfg.augment.train, _convert_="all")
                datasets[label] = (version, make_dataset(version, pipeline, cfg, transform, samples, shared, isbi))
                datasets[label][1].compact_batches = label == "compact"
                clock.time_load(datasets[label][1])
            rounds, loader = [], defaultdict(list)
            for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
                keys = round_keys(len(datasets["after"][1]), round_, samples)
                order = list(LABELS) if round_ % 2 else list(reversed(LABELS))
                result = measure_round({label: datasets[label] for label in order}, keys, batch, clock, pin)
                if not args.no_loader:
                    for label in order:
                        version, dataset = datasets[label]
                        loader[label].append(loader_rate(version, dataset, keys, batch, 1, pin))
                if round_:
                    rounds.append(result)
            unit = "crop" if pipeline == "volume" else "image"
            per_worker[pipeline] = report(pipeline, rounds, loader, unit)
            if args.workers and pipeline == "default":
                print("\n| workers | images/s, after | images/s, after, compact batches |\n|---|---|---|")
                keys = round_keys(len(datasets["after"][1]), 99, 64 * batch)
                for workers in (int(w) for w in args.workers.split(",")):
                    rates = [loader_rate(*datasets[label], keys, batch, workers, pin) for label in ("after", "compact")]
                    print(f"| {workers} | {rates[0]:.0f} | {rates[1]:.0f} |", flush=True)
    finally:
        clock.close()
    if args.model and torch.cuda.is_available():
        for batch in (16, 32):
            rate = model_rate(batch, 512)
            print(f"\nU-Net-R34 training at 512 px, batch {batch}, bf16, channels-last, fused AdamW: {rate:.0f} "
                  f"images/s on {torch.cuda.get_device_name()}; loader workers to feed it (1-worker rates):")
            for pipeline, rates in per_worker.items():
                print(f"  {pipeline}: " + ", ".join(f"{LABELS[label]} {math.ceil(rate / rates[label])}"
                                                   for label in ("before", "after", "compact")))

if __name__ == "__main__":
    main()
