"""Deployment gates: which variants a target profile accepts, and which one it ships.

Pipeline step 7 (see ARCHITECTURE.md): ``benchmark`` and ``evaluate`` produce per-variant metrics;
:func:`select_variant` picks, per profile, the fastest variant (lowest batch-1 P50) passing every
gate, or raises :class:`~ml.errors.GateError` whose message is the full variant × gate table.
:func:`check_gates` is pure (metrics in, verdicts out, no I/O) because ``edgefleet models promote``
re-checks a registered version's logged metrics with it.

A profile comes from config, e.g.::

    profiles:
      cpu-int8-small:
        {min_accuracy: 0.95, max_accuracy_drop_vs_teacher: 0.005, max_p99_ms: 1.0, max_size_kb: 100}

Accuracies are fractions (0.005 is half a percentage point). A gate whose metric is missing or NaN
fails: an unmeasured model never ships.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

from ml.errors import GateError


@dataclass(frozen=True)
class GateProfile:
    """Limits of one deployment target. ``None`` means the gate is not applied."""

    name: str
    min_accuracy: float | None = None
    max_accuracy_drop_vs_teacher: float | None = None
    max_p50_ms: float | None = None
    max_p99_ms: float | None = None
    max_size_kb: float | None = None
    min_agreement_with_parent: float | None = None

    @classmethod
    def from_config(cls, name: str, settings: Mapping[str, object]) -> GateProfile:
        """Build a profile from its YAML mapping, refusing unknown keys and non-numeric limits.

        Raises:
            GateError: Unknown gate name, a non-numeric or NaN limit, or no gate at all.
        """
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise GateError(f"profile {name!r}: unknown gate(s) {unknown}; known gates are {sorted(known)}")
        limits: dict[str, float] = {}
        for key, value in settings.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
                raise GateError(f"profile {name!r}: gate {key} needs a number, got {value!r}")
            limits[key] = float(value)
        if not limits:
            raise GateError(f"profile {name!r} declares no gate")
        return cls(name=name, **limits)


def profiles_from_config(config: Mapping[str, object]) -> list[GateProfile]:
    """All profiles of a ``profiles:`` config section, in declaration order.

    Values may be plain mappings (from YAML) or pydantic models (``ml.config.ProfileGates``);
    models are read through ``model_dump()`` so this module needs no pydantic import.

    Raises:
        GateError: A profile is malformed (see :meth:`GateProfile.from_config`).
    """
    out: list[GateProfile] = []
    for name, settings in config.items():
        dump = getattr(settings, "model_dump", None)
        if callable(dump):
            settings = dump()
        if not isinstance(settings, Mapping):
            raise GateError(f"profile {name!r} must be a mapping of gate: limit")
        out.append(GateProfile.from_config(str(name), settings))
    return out


@dataclass(frozen=True)
class GateResult:
    """One gate applied to one variant."""

    gate: str
    metric: str
    measured: float | None
    limit: float
    comparison: str
    passed: bool


# gate -> (metric it reads, comparison, how to derive the measured value)
_MeasuredFn = Callable[[Mapping[str, float], float | None], float | None]


def _metric(key: str) -> _MeasuredFn:
    def read(metrics: Mapping[str, float], _teacher: float | None) -> float | None:
        value = metrics.get(key)
        return None if value is None else float(value)

    return read


def _drop(metrics: Mapping[str, float], teacher_accuracy: float | None) -> float | None:
    acc = metrics.get("accuracy")
    if acc is None or teacher_accuracy is None:
        return None
    return float(teacher_accuracy) - float(acc)


_GATES: dict[str, tuple[str, str, _MeasuredFn]] = {
    "min_accuracy": ("accuracy", "≥", _metric("accuracy")),
    "max_accuracy_drop_vs_teacher": ("teacher_accuracy - accuracy", "≤", _drop),
    "max_p50_ms": ("p50_ms", "≤", _metric("p50_ms")),
    "max_p99_ms": ("p99_ms", "≤", _metric("p99_ms")),
    "max_size_kb": ("size_kb", "≤", _metric("size_kb")),
    "min_agreement_with_parent": ("agreement_with_parent", "≥", _metric("agreement_with_parent")),
}


def check_gates(
    profile: GateProfile, metrics: Mapping[str, float], teacher_accuracy: float | None
) -> list[GateResult]:
    """Apply every gate of ``profile`` to one variant's ``metrics``. Pure: no I/O, no side effects.

    Args:
        profile: The limits.
        metrics: At least the metrics the profile's gates read (``accuracy``, ``p50_ms``,
            ``p99_ms``, ``size_kb``, ``agreement_with_parent``); extra keys are ignored.
        teacher_accuracy: The teacher's accuracy on the same test split, for the drop gate.

    Returns:
        One result per gate the profile sets, in a fixed order. A missing or NaN metric fails.
    """
    results: list[GateResult] = []
    for gate, (metric, comparison, measure) in _GATES.items():
        limit = getattr(profile, gate)
        if limit is None:
            continue
        measured = measure(metrics, teacher_accuracy)
        if measured is None or math.isnan(measured):
            passed = False
            measured = None
        elif comparison == "≥":
            passed = measured >= limit
        else:
            passed = measured <= limit
        results.append(GateResult(gate, metric, measured, float(limit), comparison, passed))
    return results


class HasMetrics(Protocol):
    """Anything with a name and flat metrics, e.g. :class:`ml.benchmark.BenchmarkResult`."""

    @property
    def name(self) -> str: ...

    def metrics(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Selection:
    """The variant a profile ships, why, and how every variant fared."""

    profile: str
    variant: str
    p50_ms: float
    gates: tuple[GateResult, ...]
    all_results: Mapping[str, tuple[GateResult, ...]]
    reason: str = ""

    @property
    def table(self) -> str:
        """Plain-text variant × gate table (for logs and the model card)."""
        return render_gate_table(self.profile, self.all_results)


def _as_metrics(
    variants: Sequence[HasMetrics] | Mapping[str, Mapping[str, float]],
) -> dict[str, dict[str, float]]:
    if isinstance(variants, Mapping):
        return {str(name): dict(values) for name, values in variants.items()}
    # The torch-eager teacher is benchmarked as the baseline but is never a shippable artefact.
    return {v.name: v.metrics() for v in variants if getattr(v, "runtime", None) != "torch-eager"}


def _fmt(result: GateResult) -> tuple[str, str]:
    pct = result.metric in ("accuracy", "teacher_accuracy - accuracy", "agreement_with_parent")
    if result.measured is None:
        measured = "missing"
    else:
        measured = f"{100 * result.measured:.2f} %" if pct else f"{result.measured:.4g}"
    limit = f"{100 * result.limit:.2f} %" if pct else f"{result.limit:.4g}"
    return measured, f"{result.comparison} {limit}"


def render_gate_table(profile: str, all_results: Mapping[str, Sequence[GateResult]]) -> str:
    """Render each variant × gate as aligned plain text: measured value, limit, PASS/FAIL."""
    rows: list[tuple[str, ...]] = [("variant", "gate", "measured", "limit", "result")]
    for variant, results in all_results.items():
        for result in results:
            measured, limit = _fmt(result)
            rows.append((variant, result.gate, measured, limit, "pass" if result.passed else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"profile {profile}:"]
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


#: P50s closer than this fraction of the faster one are tied even when the measured noise is smaller:
#: batch-1 medians of one process drift by about this much between runs on a shared CPU.
MIN_RELATIVE_NOISE = 0.03


def p50_noise_ms(metrics: Mapping[str, float]) -> float:
    """How far a variant's P50 can move on noise alone: its ``p50_noise_ms`` metric (the spread of the
    medians of the benchmark's consecutive chunks of runs, ``ml.benchmark``) or, without it, zero."""
    value = metrics.get("p50_noise_ms", 0.0)
    return float(value) if math.isfinite(value) else 0.0


def select_variant(
    profile: GateProfile,
    variants: Sequence[HasMetrics] | Mapping[str, Mapping[str, float]],
    teacher_accuracy: float | None,
) -> Selection:
    """Pick the fastest variant that passes every gate of ``profile``, treating latency noise as a tie.

    Noise-aware: the variants whose P50 is within the noise of the fastest passing one are tied, where the
    noise of a pair is the larger of their ``p50_noise_ms`` (the spread of per-chunk medians the benchmark
    measured) and :data:`MIN_RELATIVE_NOISE` of the fastest P50. Among tied variants the higher accuracy
    wins, then the smaller file, then the name, so near-equal variants no longer flip on noise. The
    selection's ``reason`` says which rule decided.

    Args:
        profile: The target's limits.
        variants: Results with ``name`` and ``metrics()``, or a mapping name → metrics.
        teacher_accuracy: Teacher accuracy on the same test split.

    Returns:
        The chosen variant with every variant's gate results.

    Raises:
        GateError: No variant is given, or none passes; the message is the variant × gate table.
    """
    metrics = _as_metrics(variants)
    if not metrics:
        raise GateError(f"profile {profile.name}: no variants to choose from")
    all_results = {name: tuple(check_gates(profile, m, teacher_accuracy)) for name, m in metrics.items()}
    passing = [name for name, results in all_results.items() if all(r.passed for r in results)]
    passing = [name for name in passing if not math.isnan(metrics[name].get("p50_ms", math.nan))]
    if not passing:
        raise GateError(
            f"no variant passes every gate of profile {profile.name!r}\n"
            + render_gate_table(profile.name, all_results)
        )
    fastest = min(passing, key=lambda n: (metrics[n]["p50_ms"], metrics[n].get("size_kb", math.inf), n))
    fast_p50 = metrics[fastest]["p50_ms"]

    def tolerance(name: str) -> float:
        return max(p50_noise_ms(metrics[name]), p50_noise_ms(metrics[fastest]), MIN_RELATIVE_NOISE * fast_p50)

    tied = [n for n in passing if metrics[n]["p50_ms"] - fast_p50 <= tolerance(n)]
    best = min(
        tied,
        key=lambda n: (-metrics[n].get("accuracy", 0.0), metrics[n].get("size_kb", math.inf), n),
    )
    return Selection(
        profile=profile.name,
        variant=best,
        p50_ms=metrics[best]["p50_ms"],
        gates=all_results[best],
        all_results=all_results,
        reason=_reason(best, fastest, tied, metrics, tolerance(best)),
    )


def _reason(
    best: str, fastest: str, tied: Sequence[str], metrics: Mapping[str, Mapping[str, float]], noise: float
) -> str:
    p50 = metrics[best]["p50_ms"]
    others = sorted(n for n in tied if n != best)
    if not others:
        return f"{best} is the fastest passing variant (P50 {p50:.4g} ms) and no other is within the noise"
    accuracy = {n: metrics[n].get("accuracy", 0.0) for n in tied}
    size = {n: metrics[n].get("size_kb", math.inf) for n in tied}
    if any(accuracy[n] != accuracy[best] for n in others):
        rule = f"highest accuracy among them ({100 * accuracy[best]:.2f} %)"
    elif any(size[n] != size[best] for n in others):
        rule = f"same accuracy, smallest file among them ({size[best]:.1f} KiB)"
    else:
        rule = "same accuracy and size; first by name"
    lead = f"fastest is {fastest}, " if fastest != best else ""
    return (
        f"{best}: {lead}P50s of {', '.join([best, *others])} differ by less than the noise "
        f"(±{noise:.3g} ms), tied; won on {rule}"
    )
