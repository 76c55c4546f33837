"""``hydra/launcher=slurm``: Hydra's submitit SLURM launcher, with job states that do not depend
on SLURM's accounting (see ``launcher.py``)."""
