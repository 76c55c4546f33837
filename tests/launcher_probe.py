"""A Lightning callback for the GPU launcher tests: each rank records the GPUs it saw and when.

With ``barrier`` (a folder) and ``jobs``, each rank of each job also waits at the start of fitting
until that many jobs' ranks of its rank number have arrived: it passes only if the jobs really run
at the same time, however slowly their processes start on a loaded machine.
"""

import os
import time
from pathlib import Path

import lightning as L
from launcher_app import record


class RecordDevices(L.Callback):
    def __init__(self, barrier: str | None = None, jobs: int = 1, timeout_s: float = 300.0):
        self.barrier, self.jobs, self.timeout_s = barrier, jobs, timeout_s

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.time()
        if self.barrier:
            folder = Path(self.barrier)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{os.getpid()}.rank{trainer.global_rank}").touch()
            while len(list(folder.glob(f"*.rank{trainer.global_rank}"))) < self.jobs:
                if time.time() - self.started > self.timeout_s:
                    raise TimeoutError(f"the other jobs did not start within {self.timeout_s} s")
                time.sleep(0.2)

    def on_fit_end(self, trainer, pl_module) -> None:
        record(os.path.join(trainer.default_root_dir, f"devices_rank{trainer.global_rank}.json"), self.started)
