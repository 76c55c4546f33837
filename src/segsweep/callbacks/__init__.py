from segsweep.callbacks.divergence import DivergedError, DivergenceStop
from segsweep.callbacks.image_logger import PredictionImageLogger
from segsweep.callbacks.pruning import OptunaPruning
from segsweep.callbacks.run_summary import RunSummary
from segsweep.callbacks.timing import PostprocessTime

__all__ = ["DivergedError", "DivergenceStop", "OptunaPruning", "PostprocessTime", "PredictionImageLogger", "RunSummary"]
