"""Report artefacts of a training run: plots (PNG) and a Markdown model card, written atomically.

Consumed by step 8 (``registry``), which logs the folder as MLflow artifacts of the registered
version (see ARCHITECTURE.md). Inputs are plain values from ``evaluate``, ``benchmark`` and
``gates``; matplotlib runs on the non-interactive Agg backend so it works headless.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the pipeline runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ml.benchmark import BenchmarkResult, ratios_to, render_variant_table
from ml.errors import DataError
from ml.files import write_atomic
from ml.gates import Selection


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return write_atomic(path, buffer.getvalue())


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, *, title: str) -> Path:
    """Confusion matrix heat map (rows true, columns predicted) with counts in the cells.

    Raises:
        DataError: ``matrix`` is not square or does not match ``class_names``.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(class_names):
        raise DataError(f"confusion matrix {matrix.shape} does not match {len(class_names)} class names")
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return _save(fig, path)


def plot_latency_histogram(results: Sequence[BenchmarkResult], path: Path) -> Path:
    """Overlaid batch-1 latency histograms (log-scaled time axis) with each variant's P50 marked.

    Raises:
        DataError: No result carries latency samples.
    """
    with_samples = [r for r in results if r.latencies_ms]
    if not with_samples:
        raise DataError("no latency samples to plot")
    low = min(min(r.latencies_ms) for r in with_samples)
    high = max(np.percentile(r.latencies_ms, 99.5) for r in with_samples)
    bins = np.geomspace(max(low, 1e-4), max(high, low * 1.01), 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in with_samples:
        (line,) = ax.plot([], [])  # take the next colour from the cycle for both artists
        colour = line.get_color()
        ax.hist(result.latencies_ms, bins=bins.tolist(), alpha=0.45, color=colour, label=f"{result.name}")
        ax.axvline(result.p50_ms, color=colour, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency (ms, log scale); dashed: P50")
    ax.set_ylabel("runs")
    ax.set_title(f"Latency distribution ({with_samples[0].threads} thread(s))")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_pareto(results: Sequence[BenchmarkResult], path: Path) -> Path:
    """Accuracy / size / latency trade-off: x = P50 (log), y = accuracy, marker area ∝ file size.

    Variants on the Pareto front (no other variant both faster and at least as accurate) are
    joined by a line.

    Raises:
        DataError: No result carries an accuracy.
    """
    scored = [r for r in results if r.accuracy is not None]
    if not scored:
        raise DataError("no accuracies to plot")
    largest = max(r.size_bytes for r in scored) or 1
    fig, ax = plt.subplots(figsize=(8, 5))
    for result in scored:
        assert result.accuracy is not None
        area = 40 + 600 * result.size_bytes / largest
        ax.scatter(result.p50_ms, 100 * result.accuracy, s=area, alpha=0.6)
        ax.annotate(
            f"{result.name}\n{result.size_kb:,.0f} KiB",
            (result.p50_ms, 100 * result.accuracy),
            fontsize="x-small",
            xytext=(6, 4),
            textcoords="offset points",
        )
    front: list[BenchmarkResult] = []
    for result in sorted(scored, key=lambda r: (r.p50_ms, -(r.accuracy or 0.0))):
        if not front or (result.accuracy or 0.0) > (front[-1].accuracy or 0.0):
            front.append(result)
    ax.plot([r.p50_ms for r in front], [100 * (r.accuracy or 0.0) for r in front], "k--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 P50 latency (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy / latency / size (marker area ∝ file size); dashed: Pareto front")
    return _save(fig, path)


def model_card(
    *,
    title: str,
    results: Sequence[BenchmarkResult],
    selections: Sequence[Selection],
    teacher_accuracy: float,
    lineage: Mapping[str, str],
    data_description: str,
    notes: Sequence[str] = (),
) -> str:
    """Markdown model card: intended use, data, variants table, gate verdicts, lineage, caveats.

    Raises:
        DataError: ``results`` is empty.
    """
    if not results:
        raise DataError("a model card needs at least one benchmark result")
    baseline = next((r for r in results if r.runtime == "torch-eager"), results[0])
    lines = [
        f"# Model card: {title}",
        "",
        "## Intended use",
        "Image classification on edge CPUs, shipped over the air by EdgeFleet. Not evaluated for any",
        "input distribution other than the data set below.",
        "",
        "## Data",
        data_description,
        "",
        f"Teacher test accuracy: {100 * teacher_accuracy:.2f} %",
        "",
        "## Variants",
        "",
        "| variant | runtime | accuracy % | agreement w/ parent % | size KiB | P50 ms | P99 ms "
        f"| samples/s @64 | × faster than {baseline.name} | size ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        ratio = ratios_to(baseline, result)
        acc = "—" if result.accuracy is None else f"{100 * result.accuracy:.2f}"
        agree = "—" if result.agreement_with_parent is None else f"{100 * result.agreement_with_parent:.2f}"
        lines.append(
            f"| {result.name} | {result.runtime} | {acc} | {agree} | {result.size_kb:,.1f} "
            f"| {result.p50_ms:.4f} | {result.p99_ms:.4f} | {result.throughput_sps:,.0f} "
            f"| {ratio['speedup_p50']:.1f} | {ratio['size_ratio']:.4f} |"
        )
    lines += ["", f"Measured on {baseline.threads} thread(s), batch 1, {baseline.runs} runs per variant.", ""]
    lines += ["## Selection and gates", ""]
    for selection in selections:
        lines += [
            f"Profile `{selection.profile}` ships **{selection.variant}** (P50 {selection.p50_ms:.4f} ms).",
            "",
            "```",
            selection.table,
            "```",
            "",
        ]
    lines += ["## Lineage", "", "| key | value |", "|---|---|"]
    lines += [f"| {key} | `{value}` |" for key, value in sorted(lineage.items())]
    lines += [
        "",
        "## Caveats",
        "- Latencies come from one shared machine; compare ratios measured in the same run, not absolutes.",
        "- INT8 variants were calibrated on training data only; accuracy is on the held-out test split.",
    ]
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Plain-text variant table", "", "```", render_variant_table(results).rstrip(), "```", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ReportFiles:
    """Paths of everything :func:`write_report` produced."""

    confusion_matrix: Path
    latency_histogram: Path
    pareto: Path
    model_card: Path

    def all(self) -> list[Path]:
        """Every file, for logging as artifacts."""
        return [self.confusion_matrix, self.latency_histogram, self.pareto, self.model_card]


def write_report(
    folder: str | Path,
    *,
    title: str,
    results: Sequence[BenchmarkResult],
    selections: Sequence[Selection],
    confusion: np.ndarray,
    class_names: Sequence[str],
    teacher_accuracy: float,
    lineage: Mapping[str, str],
    data_description: str,
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Write the three plots and the model card into ``folder`` (each file atomically).

    Args:
        folder: Output folder; created if missing.
        title: Model name for the card.
        results: Benchmark results of every variant, teacher included.
        selections: The gate selections (one per profile).
        confusion: Confusion matrix of the shipped variant on the test split.
        class_names: Class labels, in index order.
        teacher_accuracy: Teacher test accuracy.
        lineage: Key/values such as git commit, data fingerprint and config hash.
        data_description: One paragraph on the data set.
        notes: Extra caveats for the card.

    Raises:
        DataError: Inputs cannot be plotted (empty, mismatched shapes).
        OSError: The folder cannot be written.
    """
    out = Path(folder)
    card = model_card(
        title=title,
        results=results,
        selections=selections,
        teacher_accuracy=teacher_accuracy,
        lineage=lineage,
        data_description=data_description,
        notes=notes,
    )
    return ReportFiles(
        confusion_matrix=plot_confusion_matrix(
            confusion, class_names, out / "confusion_matrix.png", title=f"{title}: test confusion matrix"
        ),
        latency_histogram=plot_latency_histogram(results, out / "latency_histogram.png"),
        pareto=plot_pareto(results, out / "pareto.png"),
        model_card=write_atomic(out / "model_card.md", card.encode("utf-8")),
    )
