"""Hydra launcher that fills one node's GPUs: one job per GPU slot, each in its own process.

``hydra/launcher=gpus`` (``conf/hydra/launcher/gpus.yaml``); see ``docs/distributed.md``.
"""
