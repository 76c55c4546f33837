"""Hydra's submitit SLURM launcher, whose job states do not depend on SLURM's accounting.

submitit asks ``sacct`` for the state of its jobs. On a cluster without accounting storage (common
on small ones) ``sacct`` fails, every job stays UNKNOWN, and a job that ended without writing its
result (cancelled, killed for memory, its node lost) is waited for forever: the sweep hangs. Here
``squeue`` answers when ``sacct`` cannot, and a job that neither lists any more has ended; its
missing result then fails it as submitit fails any job that ended without one.

Requeueing is submitit's: on the time-limit signal (``--signal=USR2@signal_delay_s``) or a
preemption it requeues the job (``max_num_timeout`` times), and the job, started again, resumes
from its job dir's last checkpoint (segsweep.jobs.plan). Lightning's own SLURM requeue is off
(segsweep.train.build_trainer), so the two never both act.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import cache

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

HEADER = "JobID|State|NodeList"  # what submitit reads from sacct's --parsable2 output


@cache
def sacct_works() -> bool:
    """Whether ``sacct`` is installed and has accounting storage behind it."""
    if shutil.which("sacct") is None:
        return False
    probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0


def squeue_states(job_ids: set[str], listed: str) -> str:
    """sacct-style lines for ``job_ids`` from ``squeue`` output ``listed`` (``%i|%T|%N`` lines):
    the state squeue gives, or ENDED for a job it no longer lists (it keeps ended jobs only for a
    few minutes)."""
    lines = [line for line in listed.splitlines() if line.strip()]
    seen = {line.split("|")[0].split("_")[0] for line in lines}
    ended = [f"{job_id}|ENDED|" for job_id in sorted(job_ids) if job_id not in seen]
    return "\n".join([HEADER, *lines, *ended]) + "\n"


@cache
def squeue_watcher_class():
    """submitit's SLURM watcher, reading squeue instead of sacct (the same output format). Made on
    first use: Hydra imports every plugin at start-up, and submitit only matters in a sweep."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    class SqueueWatcher(SlurmInfoWatcher):
        def _make_command(self) -> list[str] | None:
            to_check = sorted({job.split("_")[0] for job in self._registered - self._finished})
            if not to_check:
                return None
            # The ids ride along as the script's arguments ($0 is its name, "squeue-states").
            script = 'squeue -h --states=all -o "%i|%T|%N" -j "$(echo "$@" | tr " " ",")" 2>/dev/null; true'
            return ["sh", "-c", script, "squeue-states", *to_check]

        def read_info(self, string):
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info(squeue_states({job.split("_")[0] for job in self._registered - self._finished},
                                                   text))

    return SqueueWatcher


def install_watcher() -> None:
    """Make submitit's SLURM jobs ask ``squeue`` when ``sacct`` has no accounting behind it."""
    from submitit.slurm import slurm

    watcher = squeue_watcher_class()
    if not sacct_works() and not isinstance(slurm.SlurmJob.watcher, watcher):
        slurm.SlurmJob.watcher = watcher(delay_s=600)  # submitit's own longest delay between checks


class SlurmLauncher(SubmititSlurmLauncher):
    """``hydra/launcher=slurm``: one SLURM job (array task) per sweep job, each of ``nodes x
    tasks_per_node`` ranks; states from squeue where sacct has no accounting."""

    def launch(self, job_overrides, initial_job_idx):
        install_watcher()
        return super().launch(job_overrides, initial_job_idx)
