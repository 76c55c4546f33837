"""One job in its own process: ``python -m hydra_plugins.segsweep_gpu_launcher.child <payload> <result>``.

The launcher started this process with ``CUDA_VISIBLE_DEVICES`` already set to the job's slot.
Here Hydra's own ``run_job`` runs the task, as Hydra's basic and joblib launchers do, so the job
dir, its ``.hydra/`` files and the Hydra callbacks are the same; the ``JobReturn`` goes back
pickled. When the process dies without a result (killed for memory, a crash in native code), the
launcher records the job as failed instead. A job stopped by Ctrl-C (SIGINT; Lightning then ends
the fit and exits) ends with code ``INTERRUPTED`` and no traceback: it stays resumable.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals

from segsweep.jobs.files import write_atomic

INTERRUPTED = 130  # exit code of a job stopped by SIGINT (128 + 2, as shells report it)


def picklable(job_return: JobReturn) -> bytes:
    try:
        return cloudpickle.dumps(job_return)
    except Exception:  # an exception object that does not pickle still reports what it was
        error = job_return._return_value
        job_return.return_value = RuntimeError(f"{type(error).__name__}: {error}")
        return cloudpickle.dumps(job_return)


def main(payload_path: str, result_path: str) -> None:
    payload = cloudpickle.loads(Path(payload_path).read_bytes())
    if payload["cpus"] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, payload["cpus"])
    setup_globals()
    Singleton.set_state(payload["singleton_state"])
    HydraConfig.instance().set_config(payload["config"])
    try:
        job_return = run_job(
            hydra_context=payload["hydra_context"],
            task_function=payload["task_function"],
            config=payload["config"],
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning answers SIGINT with exit(1)
        if isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt):
            sys.exit(INTERRUPTED)
        raise
    write_atomic(result_path, picklable(job_return))  # the launcher reads only complete results


if __name__ == "__main__":
    main(*sys.argv[1:3])
