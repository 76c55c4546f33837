"""Fixtures of the `cluster` tests: a real SLURM cluster and a real PostgreSQL server on this machine.

Every test under tests/cluster/ gets the `cluster` marker, which the default run excludes:
    make test-cluster            # = pytest -q -m cluster
    make test-cluster ARGS="-k requeue -x"

    def test_x(slurm_cluster, tmp_path):
        slurm_cluster.run("sbatch", "--wait", "--ntasks=2", "--output", str(tmp_path / "out"), script, timeout=60)
        subprocess.run([...], env=slurm_cluster.env())   # SLURM_CONF + PATH for sbatch/srun/squeue/scontrol

    def test_y(postgres_url):   # postgresql+psycopg://postgres@127.0.0.1:<port>/segsweep
        optuna.create_study(storage=postgres_url, study_name="...")

The servers are session-scoped and start on first use: slurm_cluster (one node named after this
host), slurm_cluster_2nodes (node1 + node2: two slurmd on this host), each node with 8 CPUs and 2
fake GPUs declared (tests/cluster/servers.py says why and what they do not give); postgres_server
(its .url() is postgres_url). Their daemons are stopped at the end of the session, and after a
failed start. Needs root: missing Debian packages (slurm-wlm, munge, postgresql) are installed with
apt-get. Multi-node DDP: node1/node2 do not resolve, so jobs need MASTER_ADDR=127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .servers import PostgresServer, SlurmCluster

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.cluster)


def _started(server, **ready):
    try:
        server.start()
        if ready:
            server.wait_ready(**ready)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    cluster = _started(SlurmCluster(tmp_path_factory.mktemp("slurm"), gpus_per_node=2), timeout=60)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster_2nodes(tmp_path_factory):
    cluster = _started(SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2, gpus_per_node=2), timeout=60)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = _started(PostgresServer(tmp_path_factory.mktemp("postgres")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    return postgres_server.url()
