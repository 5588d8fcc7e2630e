"""Unit tests of ml.gates: gate arithmetic, fastest-passing selection, the failure table."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ml.errors import GateError
from ml.gates import GateProfile, check_gates, profiles_from_config, select_variant

PROFILE = GateProfile.from_config(
    "cpu-int8-small",
    {"min_accuracy": 0.95, "max_accuracy_drop_vs_teacher": 0.005, "max_p99_ms": 1.0, "max_size_kb": 100},
)

VARIANTS = {
    "student-fp32": {"accuracy": 0.976, "p50_ms": 0.030, "p99_ms": 0.05, "size_kb": 130.0},
    "student-int8": {"accuracy": 0.975, "p50_ms": 0.020, "p99_ms": 0.04, "size_kb": 46.0},
    "student-dyn": {"accuracy": 0.970, "p50_ms": 0.010, "p99_ms": 0.03, "size_kb": 45.0},
    "teacher-int8": {"accuracy": 0.980, "p50_ms": 0.080, "p99_ms": 0.2, "size_kb": 530.0},
}


def test_check_gates_arithmetic() -> None:
    results = {r.gate: r for r in check_gates(PROFILE, VARIANTS["student-int8"], teacher_accuracy=0.977)}
    assert list(results) == ["min_accuracy", "max_accuracy_drop_vs_teacher", "max_p99_ms", "max_size_kb"]
    assert results["max_accuracy_drop_vs_teacher"].measured == pytest.approx(0.002)
    assert all(r.passed for r in results.values())
    failing = {r.gate: r.passed for r in check_gates(PROFILE, VARIANTS["teacher-int8"], 0.977)}
    assert failing == {
        "min_accuracy": True,
        "max_accuracy_drop_vs_teacher": True,
        "max_p99_ms": True,
        "max_size_kb": False,
    }


def test_boundaries_are_inclusive() -> None:
    profile = GateProfile(name="edge", min_accuracy=0.9, max_p99_ms=1.0)
    assert all(r.passed for r in check_gates(profile, {"accuracy": 0.9, "p99_ms": 1.0}, None))


def test_missing_or_nan_metric_fails() -> None:
    results = check_gates(PROFILE, {"accuracy": 0.99, "p99_ms": math.nan}, teacher_accuracy=None)
    by_gate = {r.gate: r for r in results}
    assert not by_gate["max_p99_ms"].passed and by_gate["max_p99_ms"].measured is None
    assert not by_gate["max_size_kb"].passed
    assert not by_gate["max_accuracy_drop_vs_teacher"].passed  # no teacher accuracy to compare


def test_selects_fastest_passing_variant() -> None:
    # student-dyn is the fastest; it ships while it is within 0.5 pp of the teacher...
    selection = select_variant(PROFILE, VARIANTS, teacher_accuracy=0.974)
    assert selection.variant == "student-dyn"
    # ...and not once it drops 0.9 pp: the next fastest passing variant ships instead.
    stricter = select_variant(PROFILE, VARIANTS, teacher_accuracy=0.979)
    assert stricter.variant == "student-int8"
    assert stricter.p50_ms == 0.020
    assert "student-dyn" in stricter.table and "FAIL" in stricter.table


def test_tie_on_p50_goes_to_smaller_file() -> None:
    variants = {
        "b": {"accuracy": 0.99, "p50_ms": 0.02, "p99_ms": 0.1, "size_kb": 50.0},
        "a": {"accuracy": 0.99, "p50_ms": 0.02, "p99_ms": 0.1, "size_kb": 60.0},
    }
    assert select_variant(PROFILE, variants, 0.99).variant == "b"


def test_no_variant_passes_raises_gate_table() -> None:
    impossible = GateProfile(name="impossible", min_accuracy=0.999, max_p99_ms=0.0001)
    with pytest.raises(GateError) as info:
        select_variant(impossible, VARIANTS, teacher_accuracy=0.98)
    message = str(info.value)
    assert "impossible" in message
    for name in VARIANTS:
        assert name in message
    assert "97.50 %" in message  # measured accuracy of student-int8
    assert "≥ 99.90 %" in message  # the limit
    assert "≤ 0.0001" in message
    assert message.count("FAIL") == 2 * len(VARIANTS)


def test_select_accepts_benchmark_like_objects() -> None:
    class Result:
        def __init__(self, name: str, metrics: dict[str, float]) -> None:
            self.name = name
            self._metrics = metrics

        def metrics(self) -> dict[str, float]:
            return self._metrics

    objects = [Result(n, m) for n, m in VARIANTS.items()]
    assert select_variant(PROFILE, objects, 0.979).variant == "student-int8"


@pytest.mark.parametrize(
    "settings",
    [{"max_latency": 1.0}, {"min_accuracy": "high"}, {"min_accuracy": math.nan}, {}, {"max_p99_ms": True}],
)
def test_bad_profiles_are_gate_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(GateError):
        GateProfile.from_config("bad", settings)


def test_profiles_from_config_keeps_order() -> None:
    profiles = profiles_from_config({"b": {"max_size_kb": 10}, "a": {"min_accuracy": 0.5}})
    assert [p.name for p in profiles] == ["b", "a"]
    assert profiles[0].max_size_kb == 10.0
    with pytest.raises(GateError):
        profiles_from_config({"c": 3})
    with pytest.raises(GateError):
        select_variant(PROFILE, {}, 0.9)


def test_profiles_from_pydantic_like_objects() -> None:
    class Model:
        def model_dump(self) -> dict[str, float]:
            return {"min_accuracy": 0.9, "max_p99_ms": 2.0}

    (profile,) = profiles_from_config({"edge": Model()})
    assert profile == GateProfile(name="edge", min_accuracy=0.9, max_p99_ms=2.0)


def test_torch_baseline_is_never_selected() -> None:
    class Result:
        def __init__(self, name: str, runtime: str, p50: float) -> None:
            self.name, self.runtime, self._p50 = name, runtime, p50

        def metrics(self) -> dict[str, float]:
            return {"accuracy": 0.99, "p50_ms": self._p50, "p99_ms": self._p50, "size_kb": 1.0}

    results = [
        Result("teacher-torch-eager", "torch-eager", 0.001),
        Result("student-int8", "onnxruntime", 0.02),
    ]
    selection = select_variant(GateProfile(name="p", min_accuracy=0.5), results, 0.99)
    assert selection.variant == "student-int8"
    assert "teacher-torch-eager" not in selection.all_results


# Noise-aware selection (issue 10): P50s within the noise of the fastest passing variant are tied; ties go to
# accuracy, then size; Selection.reason names the rule that decided.
LOOSE = GateProfile(name="loose", min_accuracy=0.5)


def _variant(p50: float, accuracy: float, size_kb: float, noise: float = 0.0) -> dict[str, float]:
    return {"accuracy": accuracy, "p50_ms": p50, "p99_ms": p50, "size_kb": size_kb, "p50_noise_ms": noise}


def test_tie_within_noise_goes_to_the_more_accurate_variant_and_says_so() -> None:
    variants = {
        "student-int8-dynamic": _variant(1.000, accuracy=0.95, size_kb=40.0),
        "student-int8-static": _variant(1.020, accuracy=0.97, size_kb=45.0),  # 2 % slower: within 3 %
        "student-fp32": _variant(1.200, accuracy=0.99, size_kb=160.0),  # 20 % slower: not tied
    }
    selection = select_variant(LOOSE, variants, teacher_accuracy=0.99)
    assert selection.variant == "student-int8-static"
    assert "fastest is student-int8-dynamic" in selection.reason
    assert "student-int8-static, student-int8-dynamic differ by less than the noise" in selection.reason
    assert "tied; won on highest accuracy among them (97.00 %)" in selection.reason
    assert "student-fp32" not in selection.reason


def test_tie_with_equal_accuracy_goes_to_the_smaller_file_and_says_so() -> None:
    variants = {
        "big": _variant(1.000, accuracy=0.97, size_kb=90.0),
        "small": _variant(1.010, accuracy=0.97, size_kb=30.0),
    }
    selection = select_variant(LOOSE, variants, teacher_accuracy=0.97)
    assert selection.variant == "small"
    assert selection.reason.endswith("won on same accuracy, smallest file among them (30.0 KiB)")


def test_accuracy_outranks_size_among_tied_variants() -> None:
    variants = {
        "small-less-accurate": _variant(1.000, accuracy=0.96, size_kb=20.0),
        "large-more-accurate": _variant(1.005, accuracy=0.98, size_kb=200.0),
    }
    assert select_variant(LOOSE, variants, teacher_accuracy=0.98).variant == "large-more-accurate"


def test_measured_noise_widens_the_tie_beyond_the_relative_floor() -> None:
    quiet = {"fast": _variant(1.0, accuracy=0.95, size_kb=40.0), "slow": _variant(1.1, 0.98, size_kb=40.0)}
    assert select_variant(LOOSE, quiet, 0.98).variant == "fast"  # 10 % apart, above the 3 % floor
    noisy = {**quiet, "slow": _variant(1.1, accuracy=0.98, size_kb=40.0, noise=0.15)}
    selection = select_variant(LOOSE, noisy, 0.98)
    assert selection.variant == "slow"
    assert "(±0.15 ms), tied; won on highest accuracy" in selection.reason


def test_a_clear_winner_says_no_other_is_within_the_noise() -> None:
    variants = {"fast": _variant(0.5, 0.95, 40.0), "slow": _variant(1.0, 0.99, 20.0)}
    selection = select_variant(LOOSE, variants, teacher_accuracy=0.99)
    assert selection.variant == "fast"
    assert selection.reason == (
        "fast is the fastest passing variant (P50 0.5 ms) and no other is within the noise"
    )


def test_a_tied_variant_that_fails_a_gate_cannot_win_the_tie() -> None:
    variants = {
        "passes": _variant(1.00, accuracy=0.95, size_kb=40.0),
        "too-big": _variant(1.01, accuracy=0.99, size_kb=400.0),
    }
    profile = GateProfile(name="small", min_accuracy=0.5, max_size_kb=100)
    selection = select_variant(profile, variants, teacher_accuracy=0.99)
    assert selection.variant == "passes"
    assert "no other is within the noise" in selection.reason
