"""``segsweep-train``: build data, task, callbacks, loggers and trainer from config; fit, then test.

Returns the monitored metric so Hydra sweepers (Optuna) can optimise it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from segsweep.callbacks import RunSummary
from segsweep.callbacks.divergence import DivergenceStop
from segsweep.callbacks.pruning import pruned_epoch, pruning_callback
from segsweep.callbacks.run_summary import to_float
from segsweep.callbacks.seeding import EpochSeed
from segsweep.config import CONFIG_DIR
from segsweep.data.datamodule import SegmentationDataModule
from segsweep.jobs.checkpoints import AtomicCheckpointIO, read_checkpoint
from segsweep.jobs.ddp import launch_ranks, needs_launch
from segsweep.jobs.files import METRICS_FILE
from segsweep.jobs.plan import JobPlan
from segsweep.jobs.records import hydra_context, running_record
from segsweep.jobs.run import run_job, write_metrics
from segsweep.resolvers import register as register_resolvers
from segsweep.tasks import SegmentationTask
from segsweep.utils.instantiate import instantiate_callbacks, instantiate_loggers

# The resolvers the configs use (${join_name:}, ${sweep_group:}): set up by the entry points, here
# at import because launcher processes (joblib, submitit) import this module to run a job.
register_resolvers()


def build_datamodule(cfg: DictConfig) -> SegmentationDataModule:
    return instantiate(
        cfg.data,
        train_transform=instantiate(cfg.augment.train, _convert_="all"),
        eval_transform=instantiate(cfg.augment.eval, _convert_="all"),
        seed=cfg.get("seed", 0),
        _convert_="all",
    )


def build_task(cfg: DictConfig, datamodule: SegmentationDataModule) -> SegmentationTask:
    """The task from the ``task`` group, given plain dicts so its checkpoint is self-contained."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return instantiate(
        cfg.task,
        model=resolved["model"],
        loss=resolved["loss"],
        optimizer=resolved["optimizer"],
        scheduler=resolved.get("scheduler") or None,
        class_names=datamodule.class_names,
        in_channels=datamodule.in_channels,
        ignore_index=datamodule.ignore_index,
        run_config=resolved,
        _recursive_=False,
        _convert_="all",  # plain dicts and lists in hparams: checkpoints load without OmegaConf
    )


def build_trainer(cfg: DictConfig, summary: RunSummary, run_id: str | None = None) -> L.Trainer:
    """The trainer with the configured loggers (``run_id``: the job's own, so a resumed job
    continues its W&B run) and callbacks, plus segsweep's own: the run summary, per-batch seeding,
    the divergence check, Optuna pruning in a trial, and atomic checkpoint writes."""
    loggers = instantiate_loggers(cfg.get("logger"), run_id=run_id)
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    callbacks += [summary, EpochSeed(cfg.get("seed", 0)), DivergenceStop()]
    callbacks += [c for c in [pruning_callback(cfg.optimized_metric)] if c]  # only in an Optuna trial
    # Under SLURM, submitit requeues jobs (hydra/launcher=slurm): Lightning's own requeue is off.
    slurm = [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       plugins=[AtomicCheckpointIO(), *slurm])


def summarize(cfg, plan: JobPlan, trainer: L.Trainer, task: SegmentationTask, summary: RunSummary) -> dict:
    """The metrics.json payload: final and best values of every metric, and how the run went."""
    checkpoint = trainer.checkpoint_callback
    return {
        "status": "completed",
        "run_name": cfg.run_name,
        "monitor": cfg.optimized_metric,
        "monitor_mode": cfg.monitor_mode,
        # Testing resets the trainer's metrics: the last validation epoch comes from the history.
        "final": {**summary.final(), **{k: to_float(v) for k, v in sorted(trainer.callback_metrics.items())
                                        if k.startswith("test/")}},
        "best": summary.best(),
        "best_checkpoint": (checkpoint.best_model_path or None) if checkpoint else None,
        "params": sum(p.numel() for p in task.parameters()),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": summary.wall_seconds,  # all attempts of a resumed run
        "attempts": summary.attempts,
        "resumed_with_changes": plan.changes,
        "images_per_second": summary.images_per_second,
        # Peak memory of a training step, MiB: CUDA allocated tensors, or the CPU process's peak RSS;
        # and the most one step added to the memory in use at its start (activations, gradients).
        "peak_memory_mb": summary.peak_memory_mb,
        "peak_step_growth_mb": summary.peak_step_growth_mb,
        **hydra_context(cfg),
        "history": summary.history,
    }


def train(cfg: DictConfig, plan: JobPlan | None = None) -> dict:
    """Fit, then test the best checkpoint; write and return the metrics.json payload.

    ``plan`` (``segsweep.jobs.plan``: decided by ``run_job`` from the job dir) says where an
    interrupted attempt of this job resumes; else the user's ``ckpt_path`` starts the training.
    """
    plan = plan or JobPlan("start")
    L.seed_everything(cfg.seed, workers=True)
    resume = plan.resume_ckpt or cfg.get("ckpt_path")
    if resume:
        read_checkpoint(resume, head_only=True)  # a clear error naming the file, before any work
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    summary = RunSummary(on_epoch_end=lambda s: write_metrics(cfg.paths.output_dir, running_record(
        cfg, attempt=plan.attempt, epochs=len(s.history), best=s.best(), history=s.history)))
    trainer = build_trainer(cfg, summary, run_id=plan.run_id or None)
    if cfg.get("train", True):
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume, weights_only=False)
    pruned_at = pruned_epoch(trainer)  # an Optuna trial its pruner stopped: not worth testing
    if cfg.get("test", True) and pruned_at is None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(task, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
    result = summarize(cfg, plan, trainer, task, summary)
    if pruned_at is not None:
        result.update(status="pruned", pruned_at_epoch=pruned_at)
    write_metrics(cfg.paths.output_dir, result)
    path = Path(cfg.paths.output_dir) / METRICS_FILE
    monitor = cfg.optimized_metric
    value = result["best"].get(monitor, result["final"].get(monitor))
    rank_zero_info(f"{monitor} = {value}; outputs in {cfg.paths.output_dir} (metrics: {path})")
    return {**result, "value": value}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    if needs_launch(cfg):  # DDP: this job starts its own ranks (see segsweep/jobs/ddp.py)
        return run_job(train_on_ranks, cfg)["value"]
    return run_job(train, cfg)["value"]


def train_on_ranks(cfg: DictConfig, plan: JobPlan) -> dict:
    result = launch_ranks(cfg, "segsweep.train:train", plan)
    return {**result, "value": result["best"].get(cfg.optimized_metric)}


if __name__ == "__main__":
    main()
