"""Sweep reports: a leaderboard of a multirun's jobs (CSV, Markdown, HTML with plots).

``segsweep-report <sweep dir>`` from the shell, or automatically at the end of every multirun
through :class:`segsweep.reporting.hydra_callback.LeaderboardCallback`.
"""

from segsweep.reporting.leaderboard import collect
from segsweep.reporting.report import write_report

__all__ = ["collect", "write_report"]
