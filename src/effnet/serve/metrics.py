"""/metrics in Prometheus' text format with Triton's metric names, so Triton dashboards work unchanged.

Rendered from the same Stats the statistics extension reports (one source of truth). Triton's counters
carry no `_total` suffix (prometheus_client would add one), hence the small writer here.
"""
from __future__ import annotations

from collections.abc import Iterable

from .model import VERSION, ServedModel

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_FAMILIES = [
    ("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "counter",
     "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds"),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds"),
    ("nv_inference_pending_request_count", "gauge",
     "Instantaneous number of pending requests awaiting execution per-model."),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(models: Iterable[ServedModel]) -> str:
    models = list(models)
    samples: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    for m in models:
        s = m.scheduler.stats
        labels = f'model="{_escape(m.name)}",version="{VERSION}"'
        samples["nv_inference_request_success"].append(f"{{{labels}}} {s.success_count}")
        for reason, count in sorted(s.fail.items()):
            samples["nv_inference_request_failure"].append(
                f'{{model="{_escape(m.name)}",reason="{reason}",version="{VERSION}"}} {count}')
        samples["nv_inference_count"].append(f"{{{labels}}} {s.inference_count}")
        samples["nv_inference_exec_count"].append(f"{{{labels}}} {s.execution_count}")
        samples["nv_inference_request_duration_us"].append(f"{{{labels}}} {(s.success_ns + s.fail_ns) // 1000}")
        samples["nv_inference_queue_duration_us"].append(f"{{{labels}}} {s.queue_ns // 1000}")
        samples["nv_inference_compute_input_duration_us"].append(f"{{{labels}}} {s.compute_input_ns // 1000}")
        samples["nv_inference_compute_infer_duration_us"].append(f"{{{labels}}} {s.compute_infer_ns // 1000}")
        samples["nv_inference_compute_output_duration_us"].append(f"{{{labels}}} {s.compute_output_ns // 1000}")
        samples["nv_inference_pending_request_count"].append(f"{{{labels}}} {m.scheduler.pending}")
    lines = []
    for name, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(name + sample for sample in samples[name])
    return "\n".join(lines) + "\n"
