"""The cluster test infrastructure on the real daemons: SLURM tasks, arrays, requeue, two nodes; PostgreSQL + Optuna."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPORT = 'echo "$SLURM_PROCID $SLURM_NTASKS $SLURM_JOB_ID $SLURM_NODEID $SLURMD_NODENAME" > {out}/rank-$SLURM_PROCID'


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/bash\nset -eu\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _ranks(out: Path) -> list[list[str]]:
    return sorted(p.read_text().split() for p in out.glob("rank-*"))


@pytest.mark.timeout(120)
def test_batch_job_runs_two_tasks(slurm_cluster, tmp_path):
    script = _script(tmp_path / "job.sh", f"srun bash -c '{REPORT.format(out=tmp_path)}'")
    job = slurm_cluster.run("sbatch", "--wait", "--parsable", "--ntasks=2", f"--output={tmp_path}/slurm-%j.out",
                            script, timeout=90).stdout.strip()
    ranks = _ranks(tmp_path)
    assert [r[:3] for r in ranks] == [["0", "2", job], ["1", "2", job]], (tmp_path / f"slurm-{job}.out").read_text()


@pytest.mark.timeout(120)
def test_job_may_ask_for_the_fake_gpus(slurm_cluster, tmp_path):
    report = f'echo "$SLURM_GPUS_ON_NODE ${{CUDA_VISIBLE_DEVICES:-unset}}" > {tmp_path}/gpus'
    script = _script(tmp_path / "gpu.sh", report)
    slurm_cluster.run("sbatch", "--wait", "--gpus-per-node=2", f"--output={tmp_path}/slurm-%j.out", script, timeout=90)
    assert (tmp_path / "gpus").read_text().split() == ["2", "unset"]


@pytest.mark.timeout(120)
def test_job_array_of_two(slurm_cluster, tmp_path):
    report = f'echo "$SLURM_ARRAY_JOB_ID $SLURM_JOB_ID" > {tmp_path}/task-$SLURM_ARRAY_TASK_ID'
    script = _script(tmp_path / "array.sh", report)
    array_job = slurm_cluster.run("sbatch", "--wait", "--parsable", "--array=0-1", f"--output={tmp_path}/%A_%a.out",
                                  script, timeout=90).stdout.strip()
    tasks = {p.name: p.read_text().split() for p in tmp_path.glob("task-*")}
    assert sorted(tasks) == ["task-0", "task-1"]
    assert {t[0] for t in tasks.values()} == {array_job}
    assert len({t[1] for t in tasks.values()}) == 2  # each array task is a job of its own


@pytest.mark.timeout(120)
def test_requeued_batch_job_runs_again(slurm_cluster, tmp_path):
    """scontrol requeue kills the running job and starts its script again, with SLURM_RESTART_COUNT=1
    (after the credential lifetime, AuthInfo cred_expire=10 s: SLURM's default is 120 s)."""
    log = tmp_path / "runs"
    script = _script(tmp_path / "requeue.sh", f"""\
echo "$SLURM_JOB_ID ${{SLURM_RESTART_COUNT:-none}}" >> {log}
if [ -z "${{SLURM_RESTART_COUNT:-}}" ]; then sleep 300; fi""")
    job = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", script).stdout.strip()
    slurm_cluster.wait_for("the first run", lambda: log.exists() and log.read_text(), timeout=30)
    slurm_cluster.run("scontrol", "requeue", job)
    slurm_cluster.wait_for("the requeued run", lambda: len(log.read_text().splitlines()) >= 2, timeout=60, interval=1)
    assert log.read_text().splitlines() == [f"{job} none", f"{job} 1"]
    slurm_cluster.wait_for("the job to end", lambda: "COMPLETED" in slurm_cluster.run(
        "scontrol", "show", "job", job, timeout=10).stdout, timeout=30)


@pytest.mark.timeout(120)
def test_sacct_stand_in_lets_submitit_see_a_cancelled_job(slurm_cluster, tmp_path, monkeypatch):
    import submitit

    assert "accounting storage is disabled" in slurm_cluster.run("sacct", "-j", "1", check=False).stderr
    for key, value in slurm_cluster.env(sacct=True).items():
        monkeypatch.setenv(key, value)
    executor = submitit.SlurmExecutor(folder=tmp_path / "%j")
    executor.update_parameters(partition="debug", time=5)
    job = executor.submit(time.sleep, 300)
    slurm_cluster.wait_for("the job to run", lambda: job.watcher.get_state(job.job_id, mode="force") == "RUNNING",
                           timeout=30, interval=1)
    slurm_cluster.run("scancel", job.job_id)
    slurm_cluster.wait_for("submitit to see it end", lambda: job.done(force_check=True), timeout=30, interval=1)
    assert job.state == "CANCELLED"


@pytest.mark.timeout(120)
def test_two_nodes_four_tasks(slurm_cluster_2nodes, tmp_path):
    script = _script(tmp_path / "job.sh", f"srun bash -c '{REPORT.format(out=tmp_path)}'")
    job = slurm_cluster_2nodes.run("sbatch", "--wait", "--parsable", "--nodes=2", "--ntasks-per-node=2",
                                   f"--output={tmp_path}/slurm-%j.out", script, timeout=90).stdout.strip()
    ranks = _ranks(tmp_path)
    assert [r[:3] for r in ranks] == [[str(i), "4", job] for i in range(4)]
    assert sorted((r[3], r[4]) for r in ranks) == [("0", "node1")] * 2 + [("1", "node2")] * 2


@pytest.mark.timeout(60)
def test_postgres_serves_an_optuna_study(postgres_url):
    import optuna
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == "segsweep"
    engine.dispose()

    name = f"infra-{time.time_ns()}"
    study = optuna.create_study(storage=optuna.storages.RDBStorage(postgres_url), study_name=name)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    study.tell(trial, 0.5)
    again = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(postgres_url))
    assert [(t.state, t.value) for t in again.trials] == [(optuna.trial.TrialState.COMPLETE, 0.5)]
