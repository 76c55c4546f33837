"""A tiny Hydra app for the GPU launcher tests: each job records the GPUs it saw and when it ran.

``+x=<n>`` is returned doubled; the job sleeps ``x`` times ``+sleep`` seconds (so one job can
outlast others); ``+fail=<x>`` makes the job with that ``x`` raise; ``+die=<x>`` kills that job's process as the
kernel's OOM killer would (SIGKILL).
"""

import json
import os
import signal
import time

import hydra
from hydra.core.hydra_config import HydraConfig


def record(path: str, started: float) -> None:
    with open(path, "w") as out:
        json.dump({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": started, "end": time.time(),
                   "cpus": sorted(os.sched_getaffinity(0)), "pid": os.getpid()}, out)


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg) -> float:
    started = time.time()
    time.sleep(cfg.get("sleep", 0.0) * cfg.x)
    if cfg.get("die") == cfg.x:
        os.kill(os.getpid(), signal.SIGKILL)
    if cfg.get("fail") == cfg.x:
        raise RuntimeError(f"job with x={cfg.x} failed on purpose")
    record(os.path.join(HydraConfig.get().runtime.output_dir, "record.json"), started)
    return 2.0 * cfg.x


if __name__ == "__main__":
    main()
