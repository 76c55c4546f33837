from segsweep.callbacks.image_logger import PredictionImageLogger
from segsweep.callbacks.run_summary import RunSummary

__all__ = ["PredictionImageLogger", "RunSummary"]
