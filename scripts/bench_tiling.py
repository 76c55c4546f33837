"""Our Gaussian-blended sliding window (``segsweep.inference.sliding_window_probs``) against MONAI's
(``monai.inferers.SlidingWindowInferer``), in one process, on the same random-weight tiny U-Nets and
the same inputs.

MONAI is not a project dependency: install it beside the venv, without touching it, and put it on the path::

    python -m pip install --no-deps --target /tmp/monai_pkg monai
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/monai_pkg python scripts/bench_tiling.py --rounds 5

Without MONAI the script says so and only times ours. For each input (2D images of 1024x1024, 700x900,
and smaller than a tile in one or both axes; a 3D volume) it runs three variants, configured as our
``Predictor`` defaults (tile 256, overlap 0.25, 4 tiles per call, sigma = tile/8):

- ``ours``: ``sliding_window_probs`` per image;
- ``monai``: ``SlidingWindowInferer(roi, sw_batch_size=4, overlap=0.25, mode="gaussian", sigma_scale=1/8)``,
  the closest stock configuration;
- ``monai+w``: MONAI's loop as close to ours as its API allows: ``sliding_window_inference`` (the
  function: the class caches only MONAI's own map) given our weight map (``roi_weight_map``), the tile
  clipped to the image's sides (else MONAI pads the image up to the tile) and a float32 input.

It reports whether the tile positions and weights agree, what the network is fed (calls, pixels),
max / mean |difference| to ours and to the whole-image prediction, and the wall time of each variant
(median of ``--rounds`` alternating rounds, ratio to ours); the ``no net`` inputs replace the U-Net by a
near-free function, leaving the tiling's own cost. Then two contract checks: a batch of N=2 images
(``monai+w``), and a bfloat16 input (the dtype of the output and of the accumulators).

Note: "vs whole image" on sides that are not a multiple of the U-Net's stride (700x900) includes the
whole image's stride padding at its far borders, which no tile has; compare the variants with each other.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from segsweep.inference import Predictor, gaussian_importance_map, sliding_window_probs, tile_starts
from segsweep.models.classic_unet import ClassicUNet
from segsweep.models.classic_unet3d import ClassicUNet3D

try:  # not a project dependency: see the module docstring
    import monai
    from monai.data.utils import compute_importance_map, dense_patch_slices
    from monai.inferers import SlidingWindowInferer, sliding_window_inference
    from monai.inferers.utils import _get_scan_interval
except ImportError:
    monai = None

TILE, OVERLAP, BATCH, SIGMA = 256, 0.25, 4, 1 / 8  # Predictor's defaults; the tile is the eval/predict example


def network(net: torch.nn.Module, stride: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """Probabilities of ``net`` for inputs of any size, padded at the end of each axis to the
    stride and cropped back, as ``PerPixelTask.forward`` + ``logits_to_probs`` do."""

    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        sizes = x.shape[2:]
        pads = [-n % s for n, s in zip(sizes, stride, strict=True)]
        padded = F.pad(x.float(), [p for pad in reversed(pads) for p in (0, pad)])
        return net(padded)[(..., *(slice(0, n) for n in sizes))].softmax(dim=1)

    return predict


def counting(predict: Callable[[Tensor], Tensor], log: list) -> Callable[[Tensor], Tensor]:
    def wrapped(x: Tensor) -> Tensor:
        log.append(tuple(x.shape))
        return predict(x)

    return wrapped


def ours(predict, images: Tensor, tile: tuple[int, ...]) -> Tensor:
    return torch.stack([sliding_window_probs(predict, image, tile, OVERLAP, BATCH, SIGMA) for image in images])


def monai_stock(predict, images: Tensor, tile: tuple[int, ...]) -> Tensor:
    inferer = SlidingWindowInferer(tile, sw_batch_size=BATCH, overlap=OVERLAP, mode="gaussian", sigma_scale=SIGMA)
    return inferer(images, predict)


def monai_our_weights(predict, images: Tensor, tile: tuple[int, ...]) -> Tensor:
    """MONAI's loop made to do what ours does: our weight map, tile sides clipped to the image (so
    that MONAI does not pad), float32 accumulators (MONAI accumulates in the input's dtype)."""
    roi = tuple(min(t, n) for t, n in zip(tile, images.shape[2:], strict=True))
    weights = gaussian_importance_map(*roi, sigma_scale=SIGMA)
    return sliding_window_inference(images.float(), roi, BATCH, predict, OVERLAP, mode="gaussian",
                                    sigma_scale=SIGMA, roi_weight_map=weights)


def positions(sizes: tuple[int, ...], tile: tuple[int, ...]) -> tuple[list, list]:
    """Tile corners: ours, and MONAI's (on its padded image, shifted back to image coordinates)."""
    ours_tile = [min(t, n) for t, n in zip(tile, sizes, strict=True)]
    mine = list(itertools.product(*[tile_starts(n, t, max(1, math.floor(side * (1 - OVERLAP))))
                                    for n, t, side in zip(sizes, ours_tile, tile, strict=True)]))
    padded = tuple(max(n, t) for n, t in zip(sizes, tile, strict=True))
    shift = [(p - n) // 2 for p, n in zip(padded, sizes, strict=True)]
    interval = _get_scan_interval(padded, tile, len(tile), (OVERLAP,) * len(tile))
    theirs = [tuple(int(s.start) - d for s, d in zip(window, shift, strict=True))
              for window in dense_patch_slices(padded, tile, interval)]
    return mine, theirs


def weight_report(tile: tuple[int, ...]) -> str:
    mine = gaussian_importance_map(*tile, sigma_scale=SIGMA)
    theirs = compute_importance_map(tile, mode="gaussian", sigma_scale=SIGMA)
    theirs = theirs / theirs.max()  # a constant factor cancels in the blend; MONAI's max is ~0.9998 (even sides)
    floored = theirs <= theirs.min() * (1 + 1e-6)
    differ = (theirs - mine).abs() > 1e-6 * mine.clamp_min(1e-6) + 1e-7
    return (f"weights {'x'.join(map(str, tile))}: min ours {mine.min():.1e}, MONAI {theirs.min():.1e} (floor 1e-3); "
            f"max |diff| {(theirs - mine).abs().max():.1e}, {differ.float().mean():.1%} of a tile differ, "
            f"{floored.float().mean():.1%} at MONAI's floor")


def import_seconds() -> float:
    """``import monai.inferers`` in a fresh interpreter that has imported torch already."""
    code = "import time, torch; t = time.perf_counter(); import monai.inferers; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per input (0: no timing)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--width", type=int, default=8, help="U-Net base width")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    unet2d = ClassicUNet(1, 3, depth=3, base_width=args.width).eval()
    unet3d = ClassicUNet3D(1, 3, depth=2, base_width=max(2, args.width // 2), pool_z_levels=1).eval()
    predict2d, predict3d = network(unet2d, (8, 8)), network(unet3d, unet3d.output_stride)

    def no_net(x: Tensor) -> Tensor:  # a near-free "network": the time left is the tiling's own
        return torch.cat([x, -x, 0 * x], dim=1).float().softmax(dim=1)

    cases = [  # name, input (N, C, *sizes), tile, predict
        ("1024x1024", (1, 1, 1024, 1024), (TILE, TILE), predict2d),
        ("700x900", (1, 1, 700, 900), (TILE, TILE), predict2d),
        ("200x900 (H < tile)", (1, 1, 200, 900), (TILE, TILE), predict2d),
        ("200x180 (< tile)", (1, 1, 200, 180), (TILE, TILE), predict2d),
        ("3D 40x160x160", (1, 1, 40, 160, 160), (16, 64, 64), predict3d),
        ("1024x1024, no net", (1, 1, 1024, 1024), (TILE, TILE), no_net),
        ("700x900, no net", (1, 1, 700, 900), (TILE, TILE), no_net),
    ]
    variants = {"ours": ours}
    if monai is None:
        print("MONAI is NOT installed (not a project dependency): timing ours only. To compare, run\n"
              "  python -m pip install --no-deps --target /tmp/monai_pkg monai\n"
              "  PYTHONPATH=/tmp/monai_pkg python scripts/bench_tiling.py")
    else:
        variants |= {"monai": monai_stock, "monai+w": monai_our_weights}
        print(f"MONAI {monai.__version__} from {os.path.dirname(monai.__file__)}; "
              f"`import monai.inferers` after torch: {import_seconds():.2f} s (fresh interpreter)")
        for tile in {case[2] for case in cases}:
            print(weight_report(tile))
    print(f"tile {TILE}, overlap {OVERLAP}, {BATCH} tiles per call, sigma = tile * {SIGMA}, "
          f"{args.threads} thread(s), tiny U-Nets (2D width {args.width}, 3D width {max(2, args.width // 2)})\n")

    rows = []
    for name, shape, tile, predict in cases:
        images = torch.randn(shape)
        whole = predict(images)
        outputs, fed = {}, {}
        for key, run in variants.items():
            log: list = []
            outputs[key] = run(counting(predict, log), images, tile)
            fed[key] = (len(log), sum(math.prod(s[:1] + s[2:]) for s in log))
        print(f"== {name}: input {tuple(shape)}, tile {tile}")
        if monai is not None:
            mine, theirs = positions(shape[2:], tile)
            same = sorted(mine) == sorted(theirs)
            print(f"  tile corners: ours {len(mine)}, MONAI {len(theirs)}, identical: {same}"
                  + ("" if same else f" (ours {mine[:2]}..., MONAI {theirs[:2]}...: MONAI pads the image "
                                     "to the tile, centred, and feeds whole tiles)"))
        for key, out in outputs.items():
            calls, pixels = fed[key]
            line = (f"  {key:8s} out {tuple(out.shape)} {str(out.dtype)[6:]}, {calls} calls, "
                    f"{pixels / images[0, 0].numel():.2f}x the image's pixels fed; "
                    f"vs whole image max {(out - whole).abs().max():.2e} mean {(out - whole).abs().mean():.2e}")
            if key != "ours":
                diff = (out - outputs["ours"]).abs()
                line += f"; vs ours max {diff.max():.2e} mean {diff.mean():.2e}"
            print(line)
        times: dict[str, list[float]] = {key: [] for key in variants}
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for key in order:
                start = time.perf_counter()
                variants[key](predict, images, tile)
                times[key].append(time.perf_counter() - start)
        if args.rounds:
            medians = {key: statistics.median(t) for key, t in times.items()}
            print("  wall time, median of", args.rounds, ":",
                  ", ".join(f"{key} {m:.3f} s ({m / medians['ours']:.2f}x ours)" for key, m in medians.items()))
            rows.append((name, medians))
        print()

    if monai is not None:  # contract checks: N > 1 and a low-precision input
        images = torch.randn(2, 1, 400, 500)
        batch = monai_our_weights(predict2d, images, (TILE, TILE))
        per_image = Predictor(tile_size=TILE).maps(predict2d, images)
        print(f"N=2 batch: monai+w out {tuple(batch.shape)}, ours (Predictor.maps) {tuple(per_image.shape)}, "
              f"max |diff| {(batch - per_image).abs().max():.2e}")
        low = torch.randn(1, 1, 700, 900).bfloat16()
        for key in ("ours", "monai", "monai+w"):
            out = variants[key](predict2d, low, (TILE, TILE))
            ref = ours(predict2d, low.float(), (TILE, TILE))
            print(f"bfloat16 input: {key:7s} out dtype {str(out.dtype)[6:]}, "
                  f"max |diff| to ours on the float32 input {(out.float() - ref).abs().max():.2e}")

    if rows:
        print("\nsummary (median wall s):")
        for name, medians in rows:
            print(f"  {name:20s} " + "  ".join(f"{k} {m:.3f}" for k, m in medians.items()))


if __name__ == "__main__":
    main()
