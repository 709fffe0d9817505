"""Top-1/top-5 accuracy on ImageNet-style data: the card's table, one column per backend/precision.

runner.py runs the images through one decoder and the backends (resumable); store.py keeps the per-image results and
decides what may be reused (same model, weights, configurations, calibration set and image content);
report.py turns counts into the table, its Wilson intervals, and its Markdown and JSON forms.
"""
from .report import Agreement, ConfigResult, Configuration, EvalResult, wilson_interval
from .runner import Evaluation, eval_engines, evaluate
from .store import ResultStore, content_sha256, default_resume_dir, run_directory, run_identity

__all__ = ["Agreement", "ConfigResult", "Configuration", "EvalResult", "Evaluation", "ResultStore",
           "content_sha256", "default_resume_dir", "eval_engines", "evaluate", "run_directory", "run_identity",
           "wilson_interval"]
