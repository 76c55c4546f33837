"""Write the sweep report when a multirun ends. Declared in ``conf/hydra/default.yaml``::

    callbacks:
      leaderboard:
        _target_: segsweep.reporting.hydra_callback.LeaderboardCallback
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class LeaderboardCallback(Callback):
    """After the last job of a multirun (on the submitting machine, for remote launchers too),
    write leaderboard.csv/.md, report.html and plots into the sweep dir and log the leaderboard.

    ``metric``/``mode`` default to the jobs' monitored metric and its mode.
    """

    def __init__(self, metric: str | None = None, mode: str | None = None, log_table: bool = True):
        self.metric = metric
        self.mode = mode
        self.log_table = log_table

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Never raise: the jobs' results are on disk already and a report can be rebuilt with
        # segsweep-report, so a reporting bug must not turn a finished sweep into an error.
        sweep_dir = None
        try:
            # Imported here: Hydra builds callbacks for every run and job, and pandas/matplotlib
            # are only needed once, at the end of a multirun.
            from segsweep.reporting.report import write_report

            sweep_dir = str(config.hydra.sweep.dir)
            paths = write_report(sweep_dir, metric=self.metric, mode=self.mode, finished=True)
            if self.log_table:
                log.info("Sweep leaderboard:\n%s", paths["markdown"].read_text())
            log.info("Sweep report: %s (leaderboard: %s)", paths["html"], paths["csv"])
        except Exception:
            log.exception("Could not write the sweep report for %s; rerun: segsweep-report %s",
                          sweep_dir, sweep_dir or "<sweep dir>")
