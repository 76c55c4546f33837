"""The launcher's config schema, registered as ``hydra/launcher=segsweep_gpus``.

segsweep's ``conf/hydra/launcher/gpus.yaml`` extends it, as ``slurm.yaml`` extends submitit's.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class GpuLauncherConf:
    _target_: str = "hydra_plugins.segsweep_gpu_launcher.gpu_launcher.GpuLauncher"
    # GPU ids to share out (as nvidia-smi numbers them, or UUIDs); null: every GPU this process sees.
    devices: Any = None
    # GPUs per job: each job gets this many ids in CUDA_VISIBLE_DEVICES (use trainer=ddp when > 1).
    gpus_per_job: int = 1
    # Pin each job to its share of this process's CPUs, so loader workers sized from the CPU
    # count (on GPU runs) do not oversubscribe the node.
    pin_cpus: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="segsweep_gpus", node=GpuLauncherConf,
                             provider="segsweep")
