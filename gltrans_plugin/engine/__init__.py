"""Training: the plugin's ``Trainer`` (fast-reid's DefaultTrainer with the plugin's checks,
evaluator, hooks and resumes), its hooks, and a finished run's ``results.json``.  Loading a
trained model for use lives in ``gltrans_plugin.loading`` and never imports this package."""
from .hooks import StopOnSignal, TrainingHealth
from .results import RESULTS_FILE, log_before_after, write_results
from .trainer import Trainer, checked_loads, default_setup_gltrans

__all__ = ["RESULTS_FILE", "StopOnSignal", "Trainer", "TrainingHealth", "checked_loads",
           "default_setup_gltrans", "log_before_after", "write_results"]
