"""The job lifecycle: a job dir from its first start to its last result, on one process or many.

- ``files``: the job dir's file names and the one way to write them (whole, or not at all);
- ``records``: what ``metrics.json`` says (running, completed, failed, pruned) and who builds it;
- ``plan``: what a start of a job does with its dir (start, resume, skip, refuse), from ``job.json``;
- ``run``: runs a job function with its plan and records how it ended;
- ``ranks``: a job whose ranks a cluster started (SLURM, torchrun): rank 0 plans, the others follow;
- ``checkpoints``: checkpoint files, written atomically and read with errors naming the file;
- ``ddp``: one job on several local processes (its own DDP ranks, inside any sweep);
- ``errors``: the root cause of a failure in one line;
- ``trial``: which Optuna trial a job is (the protocol between the sweeper and a job's pruning).

``files`` and ``records`` import neither torch nor Lightning (``segsweep-report`` reads them).
"""
