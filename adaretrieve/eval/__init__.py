"""Evaluation over runs and qrels (ir-measures), run files, timers. No torch."""

from adaretrieve.eval.measures import DEFAULT_METRICS, Evaluator, parse_measures, recall_within_depth
from adaretrieve.eval.runs import Run, read_run, run_from_arrays, write_run
from adaretrieve.eval.timing import Timing, time_each

__all__ = [
    "DEFAULT_METRICS",
    "Evaluator",
    "Run",
    "Timing",
    "parse_measures",
    "read_run",
    "recall_within_depth",
    "run_from_arrays",
    "time_each",
    "write_run",
]
