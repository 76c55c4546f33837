"""Where instance validation's post-processing time goes, and the old code against the new, in one
process on the same validation batches.

Post-processing is what the instance task counts in ``time/postprocess``: per image
``split_objects`` (watershed) and ``describe``, the targets' ``from_labels``, the metric update, and
at the epoch's end the metric compute (mask AP). The benchmark loads a trained checkpoint (the
fraction depends on the maps: an untrained net gives noise, i.e. many tiny objects), runs the net
once over the validation set and keeps the probabilities, then in each round, interleaved so that
the load of a shared machine hits every variant alike:

- times the validation forward pass (net + loss, as ``shared_step`` does), the rest of the epoch;
- runs the post-processing of every variant on the same probabilities, the task's code path step
  by step: ``old`` = the modules as of ``--baseline`` (default: the commit before this work, read
  with ``git show``), ``new`` = the working tree's, ``new+pool`` = the working tree's with the
  watershed of a batch's images on ``--workers`` threads (``split_batch``);
- checks that every variant gives the same metric values to the bit.

It reports medians of the seconds per epoch of each variant on two clocks (wall, and this process's
CPU time, all threads: the steadier one on a shared machine), the per-round ratio to ``old``, the
estimated ``time/postprocess_fraction`` = post / (forward + post), and a per-part breakdown (CPU ms
per epoch; ``--threads 1`` makes the forward's CPU time that of one core).
``--validate-rounds N`` also runs Lightning's ``trainer.validate`` N times per variant and reads the
task's own ``time/postprocess_fraction``, the project's measure: it differs from the estimate (data
loading and Lightning's hooks count in its epoch, the task's tensor handling around the
post-processing in its time; it came out 10-20% above the estimate here).

    python scripts/bench_postprocess.py --checkpoint /tmp/syn.ckpt --rounds 5 --validate-rounds 3 --threads 1
    python scripts/bench_postprocess.py --checkpoint /tmp/isbi.ckpt data.root=/path/to/isbi2012 --rounds 5 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "592b1ab"  # the last commit before post-processing was made fast
MODULES = ("src/segsweep/instance/postprocess.py", "src/segsweep/instance/metrics.py")


def load_baseline(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """``postprocess`` and ``metrics`` as of git revision ``rev``, as modules of their own (the old
    metrics import the old post-processing)."""
    sources = []
    for path in MODULES:
        try:
            sources.append(subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                                          capture_output=True, text=True).stdout)
        except (OSError, subprocess.CalledProcessError) as err:
            raise SystemExit(f"cannot read {path} at {rev} from git ({err}); pass --baseline REV") from err
    post = types.ModuleType("baseline_postprocess")
    sys.modules[post.__name__] = post
    exec(compile(sources[0], f"{rev}:{MODULES[0]}", "exec"), post.__dict__)
    metrics = types.ModuleType("baseline_metrics")
    sys.modules[metrics.__name__] = metrics
    source = sources[1].replace("from segsweep.instance.postprocess import", f"from {post.__name__} import")
    exec(compile(source, f"{rev}:{MODULES[1]}", "exec"), metrics.__dict__)
    return post, metrics


def current() -> tuple[types.ModuleType, types.ModuleType]:
    from segsweep.instance import metrics, postprocess

    return postprocess, metrics


# -- the task's post-processing, step by step (InstanceSegmentationTask.postprocess + evaluate) -----
def postprocess_epoch(task, batches: list[dict], post, metrics, workers: int | None = None) -> dict:
    """One validation epoch's post-processing with the modules ``post`` / ``metrics``; ``workers``:
    the watershed through ``post.split_batch`` on that many threads (``None``: one image at a time,
    as the task does now). Returns the metric values."""
    from segsweep.inference import Prediction

    hp = task.hparams
    options = {k: v for k, v in dict(hp.postprocess or {}).items() if k != "workers"}
    collection = metrics.instance_metrics(rand_vi=hp.rand_vi).clone(prefix="val/")
    n_maps = len(task.map_names)
    for batch in batches:
        probs, valid = batch["probs"], batch["valid"]
        maps = (probs[:, :n_maps].float() * valid[:, None]).detach().cpu().numpy()
        classes = probs[:, n_maps:].float().detach().cpu().numpy()
        if workers is None:
            labels = [post.split_objects(fg, sep, hp.encoding, **options) for fg, sep in maps]
        else:
            labels = post.split_batch(maps[:, 0], maps[:, 1], hp.encoding, workers=workers, **options)
        found = [post.describe(lab, maps[i, 0], classes[i] if task.num_classes > 1 else None)
                 for i, lab in enumerate(labels)]
        Prediction.from_instances(found, probs)
        masks = batch["mask"].cpu().numpy()
        targets = [post.from_labels(t, m if task.num_classes > 1 else None, hp.ignore_index)
                   for t, m in zip(batch["instances"].cpu().numpy(), masks, strict=True)]
        collection.update(found, targets, keys=batch["name"])
        torch.from_numpy(np.stack([p.labels for p in found]))
    values = collection.compute()
    collection.reset()
    return {k: float(v) for k, v in values.items()}


def forward_epoch(task, batches: list[dict]) -> None:
    """The rest of a validation step: forward pass, probabilities and loss (no post-processing)."""
    with torch.no_grad():
        for batch in batches:
            logits = task(batch["image"])
            task.compute_loss(logits, batch)
            task.logits_to_probs(logits)


# -- per-part breakdown: timing wrappers on the module functions the task's path calls ----------
@contextlib.contextmanager
def timed(owner, names: list[str], totals: dict[str, float], prefix: str = ""):
    """Wrap ``owner.<name>`` (module function or class attribute) to add its time to ``totals``."""
    saved = {name: owner.__dict__[name] for name in names}

    def wrap(name, fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[prefix + name] += time.process_time() - started
        return inner

    for name, fn in saved.items():
        if isinstance(fn, staticmethod):
            setattr(owner, name, staticmethod(wrap(name, fn.__func__)))
        else:
            setattr(owner, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(owner, name, fn)


def breakdown(task, batches, post, metrics, kind: str) -> dict[str, float]:
    """CPU seconds per epoch of each part (nested parts, e.g. the watershed inside split_objects,
    are also counted in their caller)."""
    totals: dict[str, float] = defaultdict(float)
    post_parts = ["split_objects", "describe", "from_labels", "watershed"]
    if kind == "old":
        metric_parts = ["aggregated_jaccard", "object_matches", "panoptic_counts", "rand_and_voi",
                        "_object_masks", "_rle"]
        class_parts = []
    else:
        metric_parts = ["label_rle", "_rle"]
        class_parts = ["__init__", "aji", "object_matches", "panoptic", "rand_and_voi"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(timed(post, post_parts, totals))
        stack.enter_context(timed(metrics, metric_parts, totals))
        stack.enter_context(timed(metrics.InstanceMetrics, ["update", "compute", "_mask_ap"], totals, "metric."))
        if class_parts:
            stack.enter_context(timed(metrics.Overlap, class_parts, totals, "Overlap."))
        started = time.process_time()
        postprocess_epoch(task, batches, post, metrics)
        totals["total"] = time.process_time() - started
    return dict(totals)


# -- set-up --------------------------------------------------------------------------------------
def load(checkpoint: str, overrides: list[str]):
    from segsweep.tasks import load_task
    from segsweep.train import build_datamodule

    task = load_task(checkpoint).eval()
    cfg = OmegaConf.create(task.hparams.run_config)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    datamodule = build_datamodule(cfg)
    datamodule.setup("validate")
    batches = []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            probs = task.logits_to_probs(task(batch["image"]))
            batches.append({**batch, "probs": probs, "valid": batch["mask"] != task.hparams.ignore_index})
    return task, datamodule, batches


def validate_fraction(task, datamodule, post, metrics, workers: int | None) -> float:
    """``time/postprocess_fraction`` of one ``trainer.validate`` with the task's post-processing
    and metrics made by ``post`` / ``metrics`` (its images split on ``workers`` threads when given)."""
    import lightning as L

    from segsweep.inference import Prediction
    from segsweep.tasks import instance_base

    saved_from_labels, saved_metrics = instance_base.from_labels, task.metrics
    instance_base.from_labels = post.from_labels  # the true objects, as InstanceTask makes them
    task.metrics = torch.nn.ModuleDict({s: metrics.instance_metrics(rand_vi=task.hparams.rand_vi)
                                        .clone(prefix=f"{s}/") for s in saved_metrics})

    def postprocess(self, probs, valid=None):  # InstanceSegmentationTask.postprocess, with post's functions
        maps = probs[:, : len(self.map_names)].float()
        if valid is not None:
            maps = maps * valid[:, None]
        maps = maps.detach().cpu().numpy()
        classes = probs[:, len(self.map_names):].float().detach().cpu().numpy()
        options = {k: v for k, v in dict(self.hparams.postprocess or {}).items() if k != "workers"}
        if workers is None:
            labels = [post.split_objects(fg, sep, self.hparams.encoding, **options) for fg, sep in maps[:, :2]]
        else:
            labels = post.split_batch(maps[:, 0], maps[:, 1], self.hparams.encoding, workers=workers, **options)
        found = [post.describe(lab, maps[i, 0], classes[i] if self.num_classes > 1 else None)
                 for i, lab in enumerate(labels)]
        return Prediction.from_instances(found, probs)

    task.postprocess = types.MethodType(postprocess, task)
    try:
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            trainer.validate(task, datamodule=datamodule, verbose=False)
        return float(trainer.callback_metrics["time/postprocess_fraction"])
    finally:
        instance_base.from_labels, task.metrics = saved_from_labels, saved_metrics
        task.__dict__.pop("postprocess", None)


def same_values(a: dict, b: dict) -> bool:
    """The same value for every metric both compute (a newer metric, e.g. ap50_agnostic, may be
    missing from one side)."""
    shared = a.keys() & b.keys()
    return bool(shared) and all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in shared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a task=instance checkpoint (segsweep-train)")
    parser.add_argument("overrides", nargs="*", help="data config overrides, e.g. data.root=...")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="threads of the new+pool variant")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old code")
    parser.add_argument("--validate-rounds", type=int, default=0,
                        help="also trainer.validate this many times per variant")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                        help="torch threads of the forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    old_post, old_metrics = load_baseline(args.baseline)
    new_post, new_metrics = current()
    task, datamodule, batches = load(args.checkpoint, args.overrides)
    images = sum(len(b["name"]) for b in batches)
    shape = tuple(batches[0]["image"].shape[-2:])
    variants = {
        "old": (old_post, old_metrics, None),
        "new": (new_post, new_metrics, None),
        f"new+pool{args.workers}": (new_post, new_metrics, args.workers),
    }
    reference = postprocess_epoch(task, batches, old_post, old_metrics)  # also warms every import up
    objects = sum(len(np.unique(labels)) - 1 for b in batches for labels in b["instances"].numpy())
    print(f"{args.checkpoint}: {images} validation images of {shape[0]}x{shape[1]} px in {len(batches)} "
          f"batches, {objects} true objects; {args.threads} torch threads")
    print("values (old):", {k: round(v, 4) for k, v in reference.items()})

    wall: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        forward_epoch(task, batches)
        wall["forward"].append(time.perf_counter() - started)
        cpu["forward"].append(time.process_time() - started_cpu)
        for name, (post, metrics, workers) in variants.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            values = postprocess_epoch(task, batches, post, metrics, workers)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
            if not same_values(values, reference):
                raise SystemExit(f"{name} changed the metric values in round {round_}: {values} vs {reference}")
    print(f"\nsame metric values to the bit in all {args.rounds} rounds of {len(variants)} variants")
    print(f"\nmedians over {args.rounds} rounds, s per validation epoch. Wall clock, and this process's CPU time "
          "(all its threads; steadier on a shared machine). forward = net + loss over the validation set; "
          "fraction = post / (forward + post)")
    header = f"{'wall s':>8}{'x old':>7}{'fraction':>10}{'cpu s':>8}{'x old':>7}{'fraction':>10}"
    print(f"{'':<14}{header}   wall s of each round")
    for name in ("forward", *variants):
        row = f"{name:<14}"
        for clock in (wall, cpu):
            value = statistics.median(clock[name])
            if name == "forward":
                row += f"{value:>8.3f}{'':>17}"
                continue
            ratio = statistics.median(o / t for o, t in zip(clock["old"], clock[name], strict=True))
            row += f"{value:>8.3f}{ratio:>7.2f}{value / (statistics.median(clock['forward']) + value):>10.3f}"
        print(row + "   " + " ".join(f"{t:.3f}" for t in wall[name]))

    print("\nper part, CPU ms per validation epoch (median of breakdown runs; nested parts count in their caller too)")
    parts: dict[str, dict[str, list[float]]] = {"old": defaultdict(list), "new": defaultdict(list)}
    for _ in range(args.rounds):
        for kind, (post, metrics, _workers) in (("old", variants["old"]), ("new", variants["new"])):
            for part, seconds in breakdown(task, batches, post, metrics, kind).items():
                parts[kind][part].append(seconds)
    for kind, by_part in parts.items():
        medians = sorted(((statistics.median(v), part) for part, v in by_part.items()), reverse=True)
        print(f"  {kind}: " + ", ".join(f"{part} {1000 * seconds:.0f}" for seconds, part in medians))

    if args.validate_rounds:
        fractions: dict[str, list[float]] = defaultdict(list)
        for _ in range(args.validate_rounds):
            for name, (post, metrics, workers) in variants.items():
                fractions[name].append(validate_fraction(task, datamodule, post, metrics, workers))
        print(f"\ntrainer.validate: time/postprocess_fraction, median of {args.validate_rounds}")
        for name, values in fractions.items():
            print(f"  {name:<14}{statistics.median(values):.3f}   ({' '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
