"""The card's table from counted results: Wilson intervals, per-configuration accuracies, agreement
with the reference configuration, and the Markdown and JSON forms `effnet eval` prints."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..resolved import ResolvedModel

_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


@dataclass(frozen=True)
class Configuration:
    """One column of the table: an inference engine, the precision it runs at, and its device."""

    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"

    def __str__(self) -> str:
        return f"{self.backend} {self.precision}" + (f" {self.device}" if self.device != "cpu" else "")


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion, in percent; sound near 0 % and 100 % and for small n."""
    if n == 0:
        return (0.0, 100.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


@dataclass(frozen=True)
class ConfigResult:
    """One column's counts over the images that were decoded; accuracies in percent."""

    configuration: Configuration
    count: int
    top1_correct: int
    top5_correct: int
    throughput: float | None  # engine-only images/s in this session; None when nothing ran
    computed: int = 0  # images this column ran in this session; the rest of `count` were read back
    results_file: Path | None = None  # this column's stored results (None: not kept)

    @property
    def reused(self) -> int:
        """Images counted from this column's stored results instead of running its engine."""
        return self.count - self.computed

    @property
    def top1(self) -> float:
        return 100 * self.top1_correct / self.count if self.count else 0.0

    @property
    def top5(self) -> float:
        return 100 * self.top5_correct / self.count if self.count else 0.0

    @property
    def top1_interval(self) -> tuple[float, float]:
        return wilson_interval(self.top1_correct, self.count)

    @property
    def top5_interval(self) -> tuple[float, float]:
        return wilson_interval(self.top5_correct, self.count)


@dataclass(frozen=True)
class Agreement:
    """How far one configuration is from the first (reference) one, image by image."""

    configuration: Configuration
    reference: Configuration
    top1: float  # percent of images with the same top-1 class
    max_abs_dprob: float  # over all images and all 1000 classes


@dataclass(frozen=True)
class EvalResult:
    """Accuracies in percent; the first configuration is the reference the others are compared with."""

    model: ResolvedModel
    dataset: str
    configurations: tuple[ConfigResult, ...]
    agreement: tuple[Agreement, ...]
    failed: tuple[tuple[str, str], ...]  # (image, why) for images that could not be decoded: excluded
    evaluated_now: int  # images with at least one column run in this session; the rest were all read back
    seconds: float

    @property
    def results_file(self) -> Path | None:
        """The reference column's stored results (each column has its own: ConfigResult.results_file)."""
        return self.configurations[0].results_file

    @property
    def count(self) -> int:
        return self.configurations[0].count

    @property
    def top1(self) -> float:
        return self.configurations[0].top1

    @property
    def top5(self) -> float:
        return self.configurations[0].top5

    @property
    def card(self) -> tuple[float, float] | None:
        """(top-1, top-5) the OMZ card publishes, where the weights are the card's file."""
        card = self.model.card
        return (card.top1, card.top5) if card and self.model.official_weights else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: count/top1/top5 of the reference at the top, every configuration below."""
        def config(c: ConfigResult) -> dict[str, Any]:
            return {"backend": c.configuration.backend, "precision": c.configuration.precision,
                    "device": c.configuration.device,
                    "count": c.count, "top1": round(c.top1, 4), "top5": round(c.top5, 4),
                    "top1_ci95": [round(v, 4) for v in c.top1_interval],
                    "top5_ci95": [round(v, 4) for v in c.top5_interval],
                    "throughput": round(c.throughput, 2) if c.throughput else None,
                    "computed": c.computed, "reused": c.reused,
                    "results_file": os.fspath(c.results_file) if c.results_file else None}
        card = self.card
        return {
            **{k: v for k, v in config(self.configurations[0]).items()
               if k in ("count", "top1", "top5", "top1_ci95", "top5_ci95", "throughput")},
            "model": self.model.name, "weights_sha256": self.model.weights_sha256,
            "official_weights": self.model.official_weights, "dataset": self.dataset,
            "card": {"top1": card[0], "top5": card[1]} if card else None,
            "configurations": [config(c) for c in self.configurations],
            "agreement": [{"backend": a.configuration.backend, "precision": a.configuration.precision,
                           "device": a.configuration.device,
                           "reference": str(a.reference), "top1_agreement": round(a.top1, 4),
                           "max_abs_dprob": a.max_abs_dprob} for a in self.agreement],
            "failed": [{"image": key, "error": why} for key, why in self.failed],
            "evaluated_now": self.evaluated_now, "seconds": round(self.seconds, 3),
            "results_file": os.fspath(self.results_file) if self.results_file else None,
        }

    def heading(self) -> str:
        """Model, weights (short sha256), data and each column's engine and precision, in one line."""
        weights = f"weights sha256 {self.model.weights_id}" if self.model.weights_sha256 else "random weights"
        columns = ", ".join(str(c.configuration) for c in self.configurations)
        return f"**{self.model.name}**, {weights}, on {self.dataset}; columns (engine precision): {columns}"

    def to_markdown(self, *, max_failed: int | None = None) -> str:
        """The card's table (metrics down, configurations across, card values last) and notes."""
        card = self.card
        ref = self.configurations[0].configuration
        rows = [["metric", *(str(c.configuration) for c in self.configurations), "card"]]
        rows.append(["images", *(str(c.count) for c in self.configurations), "50000" if card else "n/a"])
        cards = card or (None, None)
        rows.append(["top-1 %", *(_percent_cell(c.top1_correct, c.count) for c in self.configurations),
                     f"{cards[0]:.2f}" if card else "n/a"])
        rows.append(["top-5 %", *(_percent_cell(c.top5_correct, c.count) for c in self.configurations),
                     f"{cards[1]:.2f}" if card else "n/a"])
        rates = (f"{c.throughput:.1f}" if c.throughput else "n/a" for c in self.configurations)
        rows.append(["engine img/s", *rates, ""])
        if self.agreement:
            rows.append([f"top-1 agreement with {ref} %", "-", *(f"{a.top1:.2f}" for a in self.agreement), ""])
            rows.append([f"max abs dprob vs {ref}", "-", *(f"{a.max_abs_dprob:.2e}" for a in self.agreement), ""])
        lines = [f"{self.heading()}; top-1/top-5 % with 95 % Wilson intervals", "", *_table(rows), ""]
        rate = ""
        if self.evaluated_now and self.seconds:
            rate = f", {self.evaluated_now / self.seconds:.1f} img/s end-to-end"
        lines.append(f"{self.count} images counted, {self.evaluated_now} evaluated in this run{rate}.")
        reused = [c for c in self.configurations if c.reused]
        if self.evaluated_now and reused:
            lines.append("Stored results reused: " + ", ".join(f"{c.configuration} {c.reused}" for c in reused) + ".")
        files = [c.results_file for c in self.configurations if c.results_file]
        if files:
            lines.append("Per-image results (a folder per column): " + ", ".join(os.fspath(f.parent) for f in files))
        elif self.model.random_weights:
            lines.append("Random weights: results are not kept.")
        else:
            lines.append("Per-image results are not kept: the results folder could not be written.")
        if self.failed:
            lines.append(f"{len(self.failed)} unreadable image(s) excluded:")
            shown = self.failed if max_failed is None else self.failed[:max_failed]
            lines += [f"- {key}: {why}" for key, why in shown]
            if len(shown) < len(self.failed):
                lines.append(f"- ... and {len(self.failed) - len(shown)} more in the JSON form)")
        return "\n".join(lines) + "\n"


def _percent_cell(successes: int, n: int) -> str:
    low, high = wilson_interval(successes, n)
    return f"{100 * successes / n if n else 0.0:.2f} [{low:.2f}, {high:.2f}]"


def _table(rows: list[list[str]]) -> list[str]:
    """A Markdown table padded to equal widths, so it reads the same on a terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |"
    return [line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])]
