"""``hydra/launcher=gpus``: run sweep jobs side by side, each pinned to its own GPU slot.

Hydra's basic launcher runs jobs one after another; its joblib and submitit-local launchers run
them in parallel but every job sees every GPU. This launcher gives each job a disjoint set of GPU
ids through ``CUDA_VISIBLE_DEVICES`` and runs it in a fresh process (no CUDA context or memory
left for the next job). Jobs wait in a queue: when one ends, the next starts on the freed slot.

Written here because no maintained Hydra launcher allocates GPUs (Hydra issues #1331, #2757,
#3002); the job itself still runs through Hydra's own ``run_job`` (see ``child.py``).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from segsweep.jobs.records import failed_record, write_metrics

from .child import INTERRUPTED
from .slots import Slot, make_slots

log = logging.getLogger(__name__)
WORK_DIR = ".gpu_launcher"  # in the sweep dir: job payloads, results and each job's console output


class GpuLauncher(Launcher):
    """Args (``hydra.launcher.*``): ``devices`` (GPU ids, or null for all visible), ``gpus_per_job``,
    ``pin_cpus`` (give each slot an equal share of the CPUs)."""

    def __init__(self, devices: Sequence | None = None, gpus_per_job: int = 1, pin_cpus: bool = True) -> None:
        self.devices = None if devices is None else list(devices) if not isinstance(devices, (str, int)) else devices
        self.gpus_per_job = gpus_per_job
        self.pin_cpus = pin_cpus
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.slots: list[Slot] = []
        self.running: dict[int, subprocess.Popen] = {}  # job number -> its process
        self.interrupted = threading.Event()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        self.slots = make_slots(self.devices, self.gpus_per_job, self.pin_cpus)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        work_dir = Path(str(self.config.hydra.sweep.dir)) / WORK_DIR
        work_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs on {len(self.slots)} GPU slots "
                 f"{[slot.cuda_visible_devices for slot in self.slots]}")
        jobs = [self._prepare(initial_job_idx + i, overrides, work_dir) for i, overrides in enumerate(job_overrides)]

        free_slots = list(self.slots)
        lock = threading.Lock()

        def run(job: dict) -> JobReturn | None:
            if self.interrupted.is_set():  # Ctrl-C: no new job starts
                return None
            # At most len(slots) jobs run at once (the pool's size), so a free slot always exists.
            with lock:
                slot = free_slots.pop(0)
            try:
                return self._run(job, slot)
            finally:
                with lock:
                    free_slots.append(slot)

        pool = ThreadPoolExecutor(max_workers=len(self.slots), thread_name_prefix="gpu-slot")
        futures = [pool.submit(run, job) for job in jobs]
        try:
            returns = [future.result() for future in futures]
        except KeyboardInterrupt:
            self._interrupt(pool)
        pool.shutdown()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return returns

    def _interrupt(self, pool: ThreadPoolExecutor) -> None:
        """Ctrl-C, as under Hydra's basic launcher: the running jobs stop where they are (each got
        the SIGINT too, or gets it now) and stay resumable (``running`` in their metrics.json, so
        ``interrupted``: the same command resumes them from their last checkpoint); no new job
        starts. Then the sweep ends, with exit code 130 and no traceback."""
        self.interrupted.set()
        pool.shutdown(wait=False, cancel_futures=True)
        running = dict(self.running)
        for process in running.values():  # Lightning ends a fit gracefully on its first SIGINT
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        log.warning("Interrupted: waiting for the running jobs %s to stop", sorted(running))
        pool.shutdown(wait=True)
        log.warning("Interrupted: jobs %s stopped and resume from their last checkpoint when this command "
                    "is run again (same hydra.sweep.dir)", sorted(running))
        raise SystemExit(INTERRUPTED)

    def _prepare(self, idx: int, overrides: Sequence[str], work_dir: Path) -> dict:
        """Compose the job's config here, as the basic launcher does (same job number and id)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        return {"idx": idx, "overrides": list(overrides), "config": config, "work_dir": work_dir,
                **_job_identity(config)}

    def _run(self, job: dict, slot: Slot) -> JobReturn:
        idx, work_dir = job["idx"], job["work_dir"]
        payload, result, console = (work_dir / f"{idx}.{suffix}" for suffix in ("payload.pkl", "result.pkl", "log"))
        payload.write_bytes(cloudpickle.dumps({
            "config": job["config"], "hydra_context": self.hydra_context, "task_function": self.task_function,
            "singleton_state": Singleton.get_state(), "cpus": slot.cpus,
        }))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,
               # the child imports what this process could (the app's own directory included)
               "PYTHONPATH": os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])}
        log.info(f"#{idx} started on GPU {slot.cuda_visible_devices} (console output: {console})")
        started = time.time()
        with open(console, "w") as out:
            process = subprocess.Popen([sys.executable, "-m", "hydra_plugins.segsweep_gpu_launcher.child",
                                        str(payload), str(result)], env=env, stdout=out, stderr=subprocess.STDOUT)
            self.running[idx] = process
            code = process.wait()
            del self.running[idx]
        payload.unlink(missing_ok=True)
        if result.is_file():
            job_return = cloudpickle.loads(result.read_bytes())
            result.unlink()
            log.info(f"#{idx} on GPU {slot.cuda_visible_devices} ended after {time.time() - started:.1f} s "
                     f"({job_return.status.name.lower()})")
            return job_return
        if code in (INTERRUPTED, -signal.SIGINT) or self.interrupted.is_set():
            return self._interrupted_return(job)  # stays resumable: nothing is recorded
        return self._record_death(job, code, console, time.time() - started)

    def _return(self, job: dict, status: JobStatus, value: Any) -> JobReturn:
        task_cfg = OmegaConf.masked_copy(job["config"], [k for k in job["config"] if k != "hydra"])
        return JobReturn(overrides=job["overrides"], cfg=task_cfg, hydra_cfg=job["config"], working_dir=os.getcwd(),
                         task_name=job["config"].hydra.job.name, status=status, _return_value=value)

    def _interrupted_return(self, job: dict) -> JobReturn:
        log.warning(f"#{job['idx']} was interrupted (SIGINT): it resumes from its last checkpoint when the sweep is "
                    "run again")
        return self._return(job, JobStatus.FAILED, KeyboardInterrupt(f"job {job['idx']} interrupted"))

    def _record_death(self, job: dict, code: int, console: Path, seconds: float) -> JobReturn:
        """A process that died without a result (killed for memory, a native crash) fails only its
        job: a ``failed`` metrics.json like segsweep's own failures, and NaN for the sweeper."""
        reason = f"signal {-code}" if code < 0 else f"exit code {code}"
        tail = console.read_text(errors="replace").splitlines()[-20:] if console.is_file() else []
        error = f"job process died ({reason}) after {seconds:.0f} s; console output in {console}"
        log.error(f"#{job['idx']}: {error}\n" + "\n".join(tail))
        choices = {k: v for k, v in job["config"].hydra.runtime.choices.items() if not k.startswith("hydra/")}
        context = {"overrides": job["overrides"], "choices": OmegaConf.to_container(OmegaConf.create(choices)),
                   "job_num": job["idx"], "multirun": True}
        write_metrics(job["job_dir"], failed_record(error, "\n".join(tail), run_name=job["run_name"],
                                                    monitor=job["monitor"], wall_time_s=seconds, context=context))
        return self._return(job, JobStatus.COMPLETED, math.nan)


def _job_identity(config: DictConfig) -> dict[str, Any]:
    """Job dir, run name and monitor of a composed job config, resolved as ``run_job`` will."""
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(config)  # ${hydra:...} interpolations read the job's own Hydra config
    try:
        job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        return {"job_dir": str(job_dir.absolute()), "run_name": OmegaConf.select(config, "run_name", default=None),
                "monitor": OmegaConf.select(config, "optimized_metric", default=None)}
    finally:
        hydra_config.cfg = previous
