"""Does the data pipeline keep the model fed? Throughput of each part of a training step, in one run.

For each model (default: U-Net with a ResNet-34 encoder, and segsweep's default classic U-Net), at
``--size`` x ``--size`` training crops:

(a) **data**: training images/s out of the DataModule's loader, with the config's augmentations
    and the workers a run on this device would use (on a GPU: sized from the CPUs);
(b) **model**: training images/s of forward + loss + backward + optimizer step on synthetic
    tensors already on the device (with the trainer's precision and channels-last setting);
(c) **step**: images/s of whole segsweep training steps (``train()``: data, model, Lightning,
    callbacks, logger), after ``--warmup`` steps.

The data pipeline should deliver at least twice what the model consumes (a >= 2 b). On a GPU the
script also reports the model's achieved TFLOP/s (FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode``) against the device's dense bf16 peak, and the peak
memory.

    python scripts/bench_throughput.py                                   # GPU: 512 px, batch 16
    python scripts/bench_throughput.py --size 128 --batch 4 --steps 6 --warmup 2 --threads 1 trainer=cpu
    python scripts/bench_throughput.py data=isbi2012 augment=em          # real data and augmentations
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, run from anywhere
from bench_overhead import StepClock, make_cfg  # noqa: E402

from segsweep.train import build_datamodule, build_task, train  # noqa: E402

MODELS = {"unet-resnet34": ["model=unet", "encoder=resnet34"], "classic_unet": ["model=classic_unet"]}  # + the default
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name fragment.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0}


def device_peak_tflops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS.items() if fragment in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_images_per_second(cfg, batches: int, warmup: int) -> tuple[float, int]:
    """(a) Training images/s out of the loader; the loader's worker count. The trainer is built so
    the DataModule picks the workers and pinning of a run on this device."""
    datamodule = build_datamodule(cfg)
    datamodule.trainer = instantiate(cfg.trainer, callbacks=[], logger=False)
    loader = datamodule.train_dataloader()
    done, start = 0, None
    while True:
        for batch in loader:
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == warmup + batches:
                images = batches * batch["image"].shape[0]
                return images / (time.perf_counter() - start), loader.num_workers


def model_step_figures(cfg, steps: int, warmup: int, device: torch.device) -> dict:
    """(b) Training images/s of the model alone on synthetic tensors; FLOPs of one step, peak memory."""
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule).to(device)
    net, criterion = task.net, task.criterion
    speed = (cfg.get("callbacks") or {}).get("speed") or {}
    memory_format = torch.channels_last if speed.get("channels_last") else torch.contiguous_format
    net.to(memory_format=memory_format)
    if speed.get("compile"):
        net.compile(**speed.get("compile_options", {}))
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    size, batch = cfg.augment.crop_size, cfg.data.batch_size
    images = torch.randn(batch, datamodule.in_channels, size, size, device=device).to(memory_format=memory_format)
    masks = torch.randint(0, len(datamodule.class_names), (batch, size, size), device=device)
    bf16 = "bf16" in str(cfg.trainer.precision)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = criterion(net(images), masks)
        loss.backward()
        optimizer.step()

    net.train()
    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        step()
    figures = {"images_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
               "tflops": counter.get_total_flops() * steps / seconds / 1e12,
               "params_m": sum(p.numel() for p in net.parameters()) / 1e6}
    if device.type == "cuda":
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return figures


def whole_step_images_per_second(cfg, steps: int, warmup: int) -> float:
    """(c) Images/s of segsweep's own training steps after the warm-up steps."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg.paths.output_dir = tmp
        train(cfg)
    ends = StepClock.latest.ends
    return steps * cfg.data.batch_size / (ends[-1] - ends[warmup - 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="training crop size (square)")
    parser.add_argument("--batch", type=int, default=16, help="training batch size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (and batches) per measure")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN tuning, compile)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer=cpu data=isbi2012")
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {list(MODELS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    trainer = "trainer=gpu" if torch.cuda.is_available() else "trainer=cpu"
    device = torch.device("cuda" if torch.cuda.is_available() and "trainer=cpu" not in args.overrides else "cpu")
    rows = []
    for name in args.models.split(","):
        cfg = make_cfg("unused", args.warmup + args.steps, [
            trainer, "logger=csv", *MODELS[name], f"augment.crop_size={args.size}", f"data.batch_size={args.batch}",
            *args.overrides])
        if OmegaConf.select(cfg, "data.dataset.image_size") is not None:  # generated data: crops = images
            cfg.data.dataset.image_size = args.size
        data, workers = data_images_per_second(cfg, args.steps, args.warmup)
        model = model_step_figures(cfg, args.steps, args.warmup, device)
        whole = whole_step_images_per_second(cfg, args.steps, args.warmup)
        rows.append((name, data, workers, model, whole))
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"\n{device} ({where}), {args.size}x{args.size} crops, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}; overrides {args.overrides or '(none)'}")
    peak = device_peak_tflops() if device.type == "cuda" else None
    for name, data, workers, model, whole in rows:
        print(f"{name} ({model['params_m']:.1f}M params): (a) data {data:.1f} img/s ({workers} workers)  "
              f"(b) model {model['images_s']:.1f} img/s ({model['step_ms']:.1f} ms/step)  (c) step {whole:.1f} img/s  "
              f"data/model {data / model['images_s']:.2f}x")
        if device.type == "cuda":
            share = f" = {100 * model['tflops'] / peak:.0f}% of the {peak:.0f} TFLOP/s bf16 peak" if peak else ""
            print(f"    model {model['tflops']:.1f} TFLOP/s{share}; peak memory {model['peak_memory_gib']:.2f} GiB")
        else:
            print(f"    model {model['tflops'] * 1000:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
