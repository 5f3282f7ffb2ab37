"""Cross-validation of params profiles on the replay: leave one source out.

The candidates are complete params files, written from the repository's ``params.yaml`` with a
few settings overridden (:data:`CANDIDATE_OVERRIDES`, :func:`write_candidates`), so
each is a file the product runs as it is. One ``forescale bench replay --shift-weeks 1`` run
replays them all on the development weeks; :func:`leave_one_source_out` then, for every source
(traces grouped by the first word of their file name: ``azure``, ``bitbrains``, ``crane``,
``msft``, ``nasa``, ``worldcup98``, ``elb``), chooses the candidate on the other sources and
reports it on the held-out one. The frozen choice is the candidate chosen on every source.

Choice rule (:func:`choose`), the pod-hour budget first: among the candidates whose summed
pod-hours stay within :data:`benchmarks.replay.TARGETS` ``pod_hours_vs_hpa_max`` of the HPA's
at both start-up delays, the fewest short minutes (summed over both delays); when none stays
within the budget, the fewest pod-hours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.replay import TARGETS
from core.params import load_params

CANDIDATE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    f"cand_{target}_{'blend' if blend else 'plain'}_r{risk:g}_u{utilization:g}_w{prewarm}".replace(
        ".", ""
    ): {
        "training": {"target": target},
        "service_defaults": {
            "risk": risk,
            "target_utilization": utilization,
            "prewarm_minutes": prewarm,
        },
        "schedule": {"blend_with_persistence": blend},
    }
    for target in ("mean", "peak")
    for blend in (False, True)
    for risk in (0.1, 0.5)
    for utilization in (0.7, 0.85, 1.0)
    for prewarm in (0, 15)
}
"""The candidates: per section, the fields of the repository's ``params.yaml`` they change."""


def write_candidates(
    base: Path,
    out_dir: Path,
    overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] = CANDIDATE_OVERRIDES,
) -> list[Path]:
    """Write one complete params file per candidate.

    Args:
        base: The ``params.yaml`` the candidates start from.
        out_dir: Where to write ``<name>.yaml``.
        overrides: Candidate name -> section -> fields to change.

    Returns:
        The written files.
    """
    params = load_params(Path(base))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, sections in overrides.items():
        candidate = json.loads(json.dumps(params))
        for section_name, changes in sections.items():
            candidate[section_name] = {**(candidate.get(section_name) or {}), **changes}
        path = out_dir / f"{name}.yaml"
        path.write_text(
            f"# Replay cross-validation candidate {name}: {base.name} with "
            f"{json.dumps(sections, sort_keys=True)}\n" + yaml.safe_dump(candidate, sort_keys=False)
        )
        paths.append(path)
    return paths


def source_of(trace: str) -> str:
    """A trace's source: the first word of its file name (``cpu_traces/azure_vm_max_1`` ->
    ``azure``)."""
    stem = trace.rsplit("/", 1)[-1]
    return re.split(r"[_\-.]", stem, maxsplit=1)[0].lower()


def totals_on(
    result: Mapping[str, Any], traces: Sequence[str], policy: str
) -> dict[str, dict[str, float]]:
    """Per start-up delay, a policy's and the HPA's summed figures over some traces."""
    out: dict[str, dict[str, float]] = {}
    for delay, figures in result["summary"].items():
        rows = [figures["per_trace"][t] for t in traces]
        short = sum(r[policy]["short_minutes"] for r in rows)
        hpa_short = sum(r["hpa"]["short_minutes"] for r in rows)
        pods = sum(r[policy]["pod_hours"] for r in rows)
        hpa_pods = sum(r["hpa"]["pod_hours"] for r in rows)
        out[delay] = {
            "short_minutes": short,
            "hpa_short_minutes": hpa_short,
            "short_vs_hpa": short / hpa_short if hpa_short else float("nan"),
            "pod_hours": pods,
            "hpa_pod_hours": hpa_pods,
            "pod_hours_vs_hpa": pods / hpa_pods if hpa_pods else float("nan"),
        }
    return out


def choose(result: Mapping[str, Any], traces: Sequence[str], candidates: Sequence[str]) -> str:
    """The candidate the choice rule (module docstring) picks on some traces."""
    scored = []
    for name in candidates:
        figures = totals_on(result, traces, name).values()
        within = all(
            f["pod_hours"] <= TARGETS["pod_hours_vs_hpa_max"] * f["hpa_pod_hours"] for f in figures
        )
        pods = sum(f["pod_hours"] for f in figures)
        short = sum(f["short_minutes"] for f in figures)
        scored.append((0 if within else 1, short if within else pods, name))
    return min(scored)[2]


def leave_one_source_out(result: Mapping[str, Any], candidates: Sequence[str]) -> dict[str, Any]:
    """Leave-one-source-out choice of a candidate on a replay result.

    Args:
        result: ``bench replay --json`` of a run with every candidate as a profile.
        candidates: The candidate profile names.

    Returns:
        ``folds`` (per held-out source: its traces, the candidate chosen on the others and its
        figures on the held-out source per delay), ``chosen_on_all``, the pooled held-out
        figures per delay and ``development_totals`` (every candidate's figures per delay on
        all the development traces, what ``chosen_on_all`` was chosen on).
    """
    first = next(iter(result["summary"].values()))
    traces = sorted(first["per_trace"])
    sources = sorted({source_of(t) for t in traces})
    folds = {}
    for source in sources:
        held = [t for t in traces if source_of(t) == source]
        rest = [t for t in traces if source_of(t) != source]
        pick = choose(result, rest, candidates)
        folds[source] = {
            "traces": held,
            "chosen": pick,
            "held_out": totals_on(result, held, pick),
        }
    pooled: dict[str, dict[str, float]] = {}
    for delay in result["summary"]:
        short = sum(f["held_out"][delay]["short_minutes"] for f in folds.values())
        hpa_short = sum(f["held_out"][delay]["hpa_short_minutes"] for f in folds.values())
        pods = sum(f["held_out"][delay]["pod_hours"] for f in folds.values())
        hpa_pods = sum(
            first_rows["hpa"]["pod_hours"]
            for first_rows in result["summary"][delay]["per_trace"].values()
        )
        pooled[delay] = {
            "short_vs_hpa": short / hpa_short if hpa_short else float("nan"),
            "pod_hours_vs_hpa": pods / hpa_pods if hpa_pods else float("nan"),
        }
    return {
        "candidates": list(candidates),
        "folds": folds,
        "held_out_pooled": pooled,
        "chosen_on_all": choose(result, traces, candidates),
        "development_totals": {name: totals_on(result, traces, name) for name in candidates},
    }
