"""Top-1/top-5 accuracy on ImageNet-style data: the card's table, one column per backend/precision.

runner.py runs the images through one decoder and the backends (resumable); store.py keeps each column's per-image
results and decides what may be reused (same model, weights, engine, precision, device, int8 calibration set and
image content);
report.py turns counts into the table, its Wilson intervals, and its Markdown and JSON forms.
"""
from .report import Agreement, ConfigResult, Configuration, EvalResult, wilson_interval
from .runner import Evaluation, eval_engines, evaluate
from .store import (ResultStore, column_directory, column_identity, content_sha256, default_resume_dir,
                    open_stores)

__all__ = ["Agreement", "ConfigResult", "Configuration", "EvalResult", "Evaluation", "ResultStore",
           "column_directory", "column_identity", "content_sha256", "default_resume_dir", "eval_engines", "evaluate",
           "open_stores", "wilson_interval"]
