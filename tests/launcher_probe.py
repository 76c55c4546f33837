"""A Lightning callback for the GPU launcher tests: each rank records the GPUs it saw and when."""

import os
import time

import lightning as L
from launcher_app import record


class RecordDevices(L.Callback):
    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.time()

    def on_fit_end(self, trainer, pl_module) -> None:
        record(os.path.join(trainer.default_root_dir, f"devices_rank{trainer.global_rank}.json"), self.started)
