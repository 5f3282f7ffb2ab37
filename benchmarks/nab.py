"""NAB benchmark of Forescale's anomaly detector (a script, not a test).

``run_nab_bench(data_dir, params_file)`` scores every NAB data file under ``data/<category>/``
that has an entry in ``labels/combined_windows.json`` with the product's detector: the settings
of ``anomaly.detector`` in the parameters file, the same for every file, through
:func:`models.anomaly.score_series` (the code :class:`models.anomaly.AnomalyDetector` runs). It
then scores the detector with :mod:`benchmarks.nab_scoring` for NAB's cost profiles. Rows
are scored in file order, as NAB does, also where a file's clock steps back.

Thresholds, three ways:

* **leave one file out** (headline): each file is scored at the threshold that maximises the
  summed raw NAB score of the *other* files (NAB's optimiser objective, candidates = every
  distinct score, ties to the highest threshold), so no file's labels choose its own threshold;
* **product**: the ``anomaly.threshold`` of the parameters file, the one the product flags with;
* **in-sample**: one threshold optimised on all files (NAB's protocol, the one behind the
  published per-file results), for comparison with the published references only.

``cross_validate=True`` adds the structure selection: a fixed list of candidate detector
structures (:data:`CANDIDATES`, overrides of the parameters file's settings) is compared by
leave-one-family-out (:func:`file_family`): for each family, every candidate's threshold is
optimised on the other families and the family is scored at it. The candidate with the best
leave-one-family-out Standard score is the one to put into the parameters file. A nested run
(candidate *and* threshold chosen on the other families only) measures the selection itself.

Run: ``forescale bench nab [--data DIR] [--json PATH] [--scores DIR] [--cv] [--doc PATH]``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from benchmarks import nab_scoring as nab
from models.anomaly import DetectorSettings, score_series

DETECTOR_NAME = "forescale"
PROFILE_LABELS = {
    "standard": "Standard",
    "reward_low_FP_rate": "Low FP",
    "reward_low_FN_rate": "Low FN",
}
#: Derived per-subset references (data README, section 1): published per-file raw scores summed
#: over exactly these files. They apply to no other file set.
REFERENCE_FILES = frozenset(
    [f"realAWSCloudwatch/ec2_cpu_utilization_{k}.csv" for k in
     ("24ae8d", "53ea38", "5f5533", "77c1ca", "825cc2", "ac20cd", "c6585a", "fe7f93")]
    + [f"realAWSCloudwatch/{stem}.csv" for stem in (
        "ec2_disk_write_bytes_1ef3de", "ec2_disk_write_bytes_c0d644", "ec2_network_in_257a54",
        "ec2_network_in_5abac7", "elb_request_count_8c0756", "grok_asg_anomaly",
        "iio_us-east-1_i-a2eb1cd9_NetworkIn", "rds_cpu_utilization_cc0c53",
        "rds_cpu_utilization_e47b3b")]
    + ["realKnownCause/nyc_taxi.csv"]
)  # fmt: skip
REFERENCE_SCORES = {
    "NuPIC (numenta 0.5.6)": (73.6, 66.9, 76.7),
    "ARTime": (72.1, 62.6, 77.6),
    "CAD OSE": (66.6, 63.2, 70.3),
    "Twitter ADVec": (33.0, 21.9, 39.1),
}
NO_REFERENCE = "no published reference for this subset"
#: Structural candidates compared by leave-one-family-out, decided before the comparison.
CANDIDATES: dict[str, dict] = {
    "history-rank, refractory 150": {"rank_normalisation": "history", "refractory": 150},
    "history-rank, refractory 300": {"rank_normalisation": "history", "refractory": 300},
    "available-rank, refractory 150": {"rank_normalisation": "available", "refractory": 150},
    "available-rank, refractory 300": {"rank_normalisation": "available", "refractory": 300},
}
SELECTION_PROFILE = "standard"


@dataclass(frozen=True)
class Corpus:
    """The labelled NAB files of a folder, read and laid out for scoring.

    Attributes:
        root: The NAB folder (holding ``data/`` and ``labels/``).
        names: Relative paths (``category/file.csv``) of the scored files, sorted.
        values: Per file, the values in file order.
        frames: Per file, the original text of each row (for the results files).
        sweeps: Per file, NAB's window layout.
        profiles: NAB cost profiles by name.
        unlabelled: Data files without an entry in the labels file (not scored).
    """

    root: Path
    names: list[str]
    values: list[np.ndarray]
    frames: list[pd.DataFrame]
    sweeps: list[nab.FileSweep]
    profiles: dict[str, nab.CostProfile]
    unlabelled: list[str]


def resolve_nab_dir(data_dir: Path) -> Path:
    """The NAB folder: ``data_dir`` itself or its ``nab/`` child, whichever holds the labels.

    Raises:
        ValueError: If neither holds ``labels/combined_windows.json``.
    """
    for candidate in (Path(data_dir), Path(data_dir) / "nab"):
        if (candidate / "labels" / "combined_windows.json").is_file():
            return candidate
    raise ValueError(
        f"NAB labels not found: neither {Path(data_dir) / 'labels' / 'combined_windows.json'} "
        f"nor {Path(data_dir) / 'nab' / 'labels' / 'combined_windows.json'} exists"
    )


def _read_data_file(path: Path) -> pd.DataFrame:
    """Read a NAB data file in file order; keeps the original text of each row."""
    try:
        text = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV file: {err}") from err
    missing = [c for c in ("timestamp", "value") if c not in text.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; it has {list(text.columns)}")
    if text.empty:
        raise ValueError(f"{path}: no rows")
    values = pd.to_numeric(text["value"], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(
            f"{path}: column 'value' is not a finite number at rows {bad[0]}..{bad[-1]}"
        )
    timestamps = pd.to_datetime(text["timestamp"], errors="coerce")
    bad = np.flatnonzero(timestamps.isna().to_numpy())
    if len(bad):
        raise ValueError(f"{path}: column 'timestamp' cannot be parsed at rows {bad[0]}..{bad[-1]}")
    return pd.DataFrame(
        {
            "timestamp": timestamps,
            "value": values,
            "raw_timestamp": text["timestamp"],
            "raw_value": text["value"],
        }
    )


def load_corpus(data_dir: Path) -> Corpus:
    """Read every labelled data file of a NAB folder (any file names, any categories).

    Args:
        data_dir: A folder with ``data/<category>/*.csv`` and ``labels/combined_windows.json``
            (optionally ``config/profiles.json``), or a folder holding such a ``nab/`` folder.

    Returns:
        The :class:`Corpus`.

    Raises:
        ValueError: If the labels are missing, no labelled data file is present, or a file is
            malformed (the message names the file).
    """
    root = resolve_nab_dir(data_dir)
    labels_path = root / "labels" / "combined_windows.json"
    profiles_path = root / "config" / "profiles.json"
    profiles = (
        nab.load_profiles(profiles_path) if profiles_path.exists() else dict(nab.NAB_PROFILES)
    )
    try:
        windows = nab.read_windows(labels_path)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{labels_path}: {err}") from err
    names = [name for name in sorted(windows) if (root / "data" / name).is_file()]
    if not names:
        raise ValueError(f"none of the files in {labels_path} exists under {root / 'data'}")
    unlabelled = sorted(
        str(p.relative_to(root / "data"))
        for p in (root / "data").glob("*/*.csv")
        if str(p.relative_to(root / "data")) not in windows
    )
    values, frames, sweeps = [], [], []
    for name in names:
        path = root / "data" / name
        frame = _read_data_file(path)
        try:
            sweeps.append(nab.sweep_file(str(path), frame["timestamp"], windows[name]))
        except ValueError as err:
            raise ValueError(f"{err} (windows from {labels_path})") from err
        values.append(frame["value"].to_numpy(dtype=float))
        frames.append(frame)
    return Corpus(root, names, values, frames, sweeps, profiles, unlabelled)


def score_corpus(corpus: Corpus, settings: DetectorSettings) -> list[np.ndarray]:
    """The detector's scores of every file, in file order (errors name the file)."""
    scores = []
    for name, values in zip(corpus.names, corpus.values, strict=True):
        try:
            scores.append(score_series(values, settings))
        except ValueError as err:
            raise ValueError(f"{corpus.root / 'data' / name}: {err}") from err
    return scores


def file_family(name: str) -> str:
    """A file's family for cross-validation: its category and name without the last ``_`` part.

    ``realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv`` -> ``realAWSCloudwatch/ec2_cpu_utilization``;
    a name without ``_`` is its own family.
    """
    category, _, file_name = name.rpartition("/")
    stem = Path(file_name).stem
    head = stem.rsplit("_", 1)[0] if "_" in stem else stem
    return f"{category}/{head}" if category else head


def _curves(
    corpus: Corpus, scores: list[np.ndarray], profile: nab.CostProfile, thresholds: np.ndarray
) -> np.ndarray:
    return np.array(
        [
            nab.score_curve(sweep, s, profile, thresholds).scores
            for sweep, s in zip(corpus.sweeps, scores, strict=True)
        ]
    )


def _bounds(corpus: Corpus, profile: nab.CostProfile, rows: list[int]) -> tuple[float, float]:
    null = sum(nab.null_score(corpus.sweeps[i], profile) for i in rows)
    perfect = sum(nab.perfect_score(corpus.sweeps[i], profile) for i in rows)
    return null, perfect


def evaluate(corpus: Corpus, scores: list[np.ndarray], product_threshold: float) -> dict[str, dict]:
    """NAB figures per profile: leave-one-file-out, product and in-sample thresholds.

    Args:
        corpus: The files.
        scores: The detector's scores per file.
        product_threshold: The product's threshold (``anomaly.threshold``).

    Returns:
        Per profile: normalised and raw scores for the three threshold protocols, the
        leave-one-file-out thresholds' spread and a per-file table.
    """
    thresholds = nab.candidate_thresholds(scores, corpus.sweeps)
    everything = list(range(len(corpus.names)))
    out: dict[str, dict] = {}
    for profile_name, profile in corpus.profiles.items():
        curves = _curves(corpus, scores, profile, thresholds)
        null, perfect = _bounds(corpus, profile, everything)
        per_file, loo_raw, product_raw = {}, 0.0, 0.0
        for i, (name, sweep) in enumerate(zip(corpus.names, corpus.sweeps, strict=True)):
            others = np.delete(curves, i, axis=0).sum(axis=0)  # not total - own: keeps ties exact
            threshold, _ = nab.best_threshold(thresholds, others)
            row = nab.score_file(sweep, scores[i], profile, threshold)
            product = nab.score_file(sweep, scores[i], profile, product_threshold)
            loo_raw += float(row.scores[0])
            product_raw += float(product.scores[0])
            per_file[name] = {
                "threshold": threshold,
                "raw_score": float(row.scores[0]),
                "tp_rows": int(row.tp[0]),
                "fp_rows": int(row.fp[0]),
                "product_raw_score": float(product.scores[0]),
                "product_fp_rows": int(product.fp[0]),
                "null_score": nab.null_score(sweep, profile),
                "windows": sweep.n_windows,
                "rows": sweep.n_rows,
            }
        loo_thresholds = [f["threshold"] for f in per_file.values()]
        corpus_threshold, corpus_raw = nab.best_threshold(thresholds, curves.sum(axis=0))
        out[profile_name] = {
            "cost_matrix": asdict(profile),
            "score": nab.normalised_score(loo_raw, null, perfect),
            "raw_score": loo_raw,
            "null_raw_score": null,
            "perfect_raw_score": perfect,
            "loo_threshold_range": [min(loo_thresholds), max(loo_thresholds)],
            "loo_threshold_median": float(np.median(loo_thresholds)),
            "product": {
                "threshold": product_threshold,
                "raw_score": product_raw,
                "score": nab.normalised_score(product_raw, null, perfect),
            },
            "in_sample": {
                "threshold": corpus_threshold,
                "raw_score": corpus_raw,
                "score": nab.normalised_score(corpus_raw, null, perfect),
            },
            "files": per_file,
        }
    return out


def cross_validate_structure(
    corpus: Corpus,
    base: DetectorSettings,
    candidates: dict[str, dict] | None = None,
    profile_name: str = SELECTION_PROFILE,
) -> dict:
    """Compare structural candidates by leave-one-family-out (see the module docstring).

    Args:
        corpus: The files.
        base: The settings the candidates override (the parameters file's).
        candidates: Name -> setting overrides (default :data:`CANDIDATES`).
        profile_name: The profile the selection optimises.

    Returns:
        Per candidate its leave-one-family-out score; per fold the family, its files, each
        candidate's training score and threshold, the nested choice and its held-out figure; the
        nested score; the selected candidate and the spread of its fold thresholds.
    """
    candidates = candidates if candidates is not None else CANDIDATES
    profile = corpus.profiles[profile_name]
    families = [file_family(name) for name in corpus.names]
    folds = sorted(set(families))
    per_candidate = {}
    for label, overrides in candidates.items():
        scores = score_corpus(corpus, replace(base, **overrides))
        thresholds = nab.candidate_thresholds(scores, corpus.sweeps)
        per_candidate[label] = (thresholds, _curves(corpus, scores, profile, thresholds))
    everything = list(range(len(corpus.names)))
    null, perfect = _bounds(corpus, profile, everything)
    lofo_raw = dict.fromkeys(candidates, 0.0)
    nested_raw = 0.0
    fold_rows = []
    for family in folds:
        test = [i for i in everything if families[i] == family]
        train = [i for i in everything if families[i] != family]
        train_null, train_perfect = _bounds(corpus, profile, train)
        row: dict = {"family": family, "files": [corpus.names[i] for i in test], "candidates": {}}
        for label, (thresholds, curves) in per_candidate.items():
            threshold, train_raw = nab.best_threshold(thresholds, curves[train].sum(axis=0))
            at = int(np.flatnonzero(thresholds == threshold)[0])
            test_raw = float(curves[test, at].sum())
            lofo_raw[label] += test_raw
            row["candidates"][label] = {
                "threshold": threshold,
                "train_score": nab.normalised_score(train_raw, train_null, train_perfect)
                if train_perfect != train_null
                else None,
                "test_raw_score": test_raw,
            }
        chosen = max(candidates, key=lambda c: (row["candidates"][c]["train_score"] or 0.0, c))
        row["nested_choice"] = chosen
        row["nested_test_raw_score"] = row["candidates"][chosen]["test_raw_score"]
        nested_raw += row["nested_test_raw_score"]
        fold_rows.append(row)
    scores_by_candidate = {
        label: nab.normalised_score(raw, null, perfect) for label, raw in lofo_raw.items()
    }
    selected = max(scores_by_candidate, key=lambda c: scores_by_candidate[c])
    fold_thresholds = [row["candidates"][selected]["threshold"] for row in fold_rows]
    return {
        "profile": profile_name,
        "candidates": candidates,
        "family_rule": "category + file name without its last '_' part",
        "leave_one_family_out": scores_by_candidate,
        "selected": selected,
        "selected_fold_thresholds": [min(fold_thresholds), max(fold_thresholds)],
        "nested_score": nab.normalised_score(nested_raw, null, perfect),
        "folds": fold_rows,
    }


def _write_results_file(
    scores_dir: Path, name: str, frame: pd.DataFrame, scores: np.ndarray, sweep: nab.FileSweep
) -> Path:
    """Write one file's output in NAB's results layout (``<det>/<category>/<det>_<file>``)."""
    category, _, file_name = name.rpartition("/")
    out_path = scores_dir / DETECTOR_NAME / category / f"{DETECTOR_NAME}_{file_name}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "timestamp": frame["raw_timestamp"],
            "value": frame["raw_value"],  # copied verbatim from the data file
            "anomaly_score": [repr(float(x)) for x in scores],  # exact round trip
            "label": (sweep.tp_unit > 0).astype(int),  # 1 inside windows, probation included
        }
    ).to_csv(out_path, index=False)
    return out_path


def run_nab_bench(
    data_dir: Path,
    params_file: Path,
    json_path: Path | None = None,
    scores_dir: Path | None = None,
    cross_validate: bool = False,
    doc_path: Path | None = None,
) -> dict:
    """Run the product's detector on the NAB files under ``data_dir``, score it, print the table.

    Args:
        data_dir: A NAB folder (``data/<category>/*.csv``, ``labels/combined_windows.json``,
            optionally ``config/profiles.json``) or a folder holding one as ``nab/``.
        params_file: The parameters file whose ``anomaly`` section sets the detector.
        json_path: Where to write the full results as JSON (skipped when ``None``).
        scores_dir: Where to write per-file detector output in NAB's results layout.
        cross_validate: Also compare :data:`CANDIDATES` by leave-one-family-out.
        doc_path: Where to write the Markdown report (:func:`render_nab_doc`).

    Returns:
        The results (see :func:`evaluate`, plus settings, files, references, runtime).

    Raises:
        ValueError: If the labels or parameters are missing or invalid, or a file is malformed
            (the message names the file).
    """
    from pipelines.anomalies import AnomalyConfig

    started = time.perf_counter()
    config = AnomalyConfig.from_file(Path(params_file))
    corpus = load_corpus(data_dir)
    t0 = time.perf_counter()
    scores = score_corpus(corpus, config.detector)
    detect_seconds = time.perf_counter() - t0
    if scores_dir is not None:
        for name, frame, s, sweep in zip(
            corpus.names, corpus.frames, scores, corpus.sweeps, strict=True
        ):
            _write_results_file(Path(scores_dir), name, frame, s, sweep)
    reference = set(corpus.names) == REFERENCE_FILES
    results: dict = {
        "detector": DETECTOR_NAME,
        "settings": asdict(config.detector),
        "product_threshold": config.threshold,
        "threshold_protocol": "leave-one-file-out: each file is scored at the threshold that "
        "maximises the summed raw NAB score of the other files (NAB optimiser objective, ties to "
        "the highest threshold); a row is a detection when anomaly_score >= threshold",
        "files": corpus.names,
        "families": {name: file_family(name) for name in corpus.names},
        "unlabelled_files_skipped": corpus.unlabelled,
        "n_windows": int(sum(s.n_windows for s in corpus.sweeps)),
        "n_rows": int(sum(s.n_rows for s in corpus.sweeps)),
        "references": {k: list(v) for k, v in REFERENCE_SCORES.items()} if reference else None,
        "profiles": evaluate(corpus, scores, config.threshold),
        "detect_seconds": round(detect_seconds, 2),
    }
    if cross_validate:
        results["cross_validation"] = cross_validate_structure(corpus, config.detector)
    results["runtime_seconds"] = round(time.perf_counter() - started, 2)
    _print_table(results)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    if doc_path is not None:
        Path(doc_path).parent.mkdir(parents=True, exist_ok=True)
        Path(doc_path).write_text(render_nab_doc(results))
    return results


def _print_table(results: dict) -> None:
    console = Console()
    table = Table(
        title=f"NAB on {len(results['files'])} files, {results['n_windows']} windows "
        f"({results['runtime_seconds']:.0f} s)"
    )
    table.add_column("detector")
    profiles = results["profiles"]
    shown = [p for p in PROFILE_LABELS if p in profiles]
    for p in shown:
        table.add_column(PROFILE_LABELS[p], justify="right")
    table.add_row(
        "forescale (leave-one-file-out threshold)", *[f"{profiles[p]['score']:.1f}" for p in shown]
    )
    table.add_row(
        f"forescale (product threshold {results['product_threshold']:g})",
        *[f"{profiles[p]['product']['score']:.1f}" for p in shown],
    )
    table.add_row(
        "forescale (in-sample threshold, NAB protocol)",
        *[f"{profiles[p]['in_sample']['score']:.1f}" for p in shown],
    )
    if results["references"]:
        for name, figures in results["references"].items():
            table.add_row(f"{name} (published, subset)", *[f"{x:.1f}" for x in figures])
    console.print(table)
    if not results["references"]:
        console.print(NO_REFERENCE)
    cv = results.get("cross_validation")
    if cv:
        console.print(
            f"leave-one-family-out ({len(cv['folds'])} folds, {cv['profile']}): "
            + ", ".join(f"{k} {v:.1f}" for k, v in cv["leave_one_family_out"].items())
            + f"; nested {cv['nested_score']:.1f}; selected: {cv['selected']} (fold thresholds "
            f"{cv['selected_fold_thresholds'][0]:.3f}-{cv['selected_fold_thresholds'][1]:.3f})"
        )


def render_nab_doc(results: dict) -> str:
    """The Markdown report of a :func:`run_nab_bench` result: protocol, figures, per-file table.

    Args:
        results: The results (as returned or as read back from the JSON).

    Returns:
        The Markdown text.
    """
    profiles = results["profiles"]
    shown = [p for p in PROFILE_LABELS if p in profiles]
    head = "| | " + " | ".join(PROFILE_LABELS[p] for p in shown) + " |"
    rule = "|---|" + "---:|" * len(shown)
    lines = [
        "# NAB benchmark of the anomaly detector",
        "",
        (
            "Generated from the JSON of `forescale bench nab --cv --json PATH` by "
            "`benchmarks.nab.render_nab_doc`; do not edit by hand."
        ),
        "",
        "## Protocol",
        "",
        (
            "- Detector: the product's (`models.anomaly.score_series`, the code "
            "`AnomalyDetector` runs) with the `anomaly.detector` settings of `params.yaml`, the "
            "same for every file; every row scored in file order, from that row and the past only."
        ),
        (
            "- Scorer: NAB's (windows, probation, scaled-sigmoid rewards; "
            "`benchmarks/nab_scoring.py`)."
        ),
        (
            "- Thresholds: **leave one file out** (headline; each file at the threshold best for the "
            "other files), the **product** threshold (`anomaly.threshold`), and NAB's **in-sample** "
            "threshold (one for all files, as in the published results; for comparison only)."
        ),
        (
            "- Structure: chosen among a fixed list of candidates by **leave one family out** (family = "
            "category + file name without its last `_` part): each family is scored at the "
            "threshold each candidate reaches on the other families. The nested figure also chooses "
            "the candidate on the other families only."
        ),
        "",
        (
            f"{len(results['files'])} files, {results['n_windows']} windows, {results['n_rows']} "
            f"rows; detection {results['detect_seconds']:.0f} s, whole run "
            f"{results['runtime_seconds']:.0f} s."
        ),
        "",
        "## Figures",
        "",
        head,
        rule,
        "| forescale, leave-one-file-out threshold | "
        + " | ".join(f"{profiles[p]['score']:.1f}" for p in shown)
        + " |",
        f"| forescale, product threshold {results['product_threshold']:g} | "
        + " | ".join(f"{profiles[p]['product']['score']:.1f}" for p in shown)
        + " |",
        "| forescale, in-sample threshold | "
        + " | ".join(
            f"{profiles[p]['in_sample']['score']:.1f} (at {profiles[p]['in_sample']['threshold']:.3f})"
            for p in shown
        )
        + " |",
    ]
    if results.get("references"):
        for name, figures in results["references"].items():
            lines.append(
                f"| {name} (published, this subset) | "
                + " | ".join(f"{x:.1f}" for x in figures)
                + " |"
            )
    else:
        lines += ["", NO_REFERENCE + "."]
    lines += [
        "",
        "Leave-one-file-out thresholds: "
        + "; ".join(
            f"{PROFILE_LABELS[p]} {profiles[p]['loo_threshold_range'][0]:.3f}–"
            f"{profiles[p]['loo_threshold_range'][1]:.3f} (median "
            f"{profiles[p]['loo_threshold_median']:.3f})"
            for p in shown
        )
        + ".",
    ]
    cv = results.get("cross_validation")
    if cv:
        labels = list(cv["candidates"])
        lines += [
            "",
            (
                "## Structure selection (leave one family out, "
                f"{PROFILE_LABELS.get(cv['profile'], cv['profile'])})"
            ),
            "",
            "| candidate | settings | leave-one-family-out score |",
            "|---|---|---:|",
        ]
        for label in labels:
            settings = ", ".join(f"{k}={v}" for k, v in cv["candidates"][label].items())
            lines.append(f"| {label} | {settings} | {cv['leave_one_family_out'][label]:.1f} |")
        lines += [
            "",
            (
                f"Selected: **{cv['selected']}**. Nested (candidate and threshold chosen on the other "
                f"families): {cv['nested_score']:.1f}. The selected candidate's fold thresholds "
                f"span {cv['selected_fold_thresholds'][0]:.3f}–"
                f"{cv['selected_fold_thresholds'][1]:.3f}."
            ),
            "",
            "| held-out family | files | "
            + " | ".join(f"{label}: train score @ threshold → held-out raw" for label in labels)
            + " | nested choice |",
            "|---|---:|" + "---|" * len(labels) + "---|",
        ]
        for fold in cv["folds"]:
            cells = []
            for label in labels:
                c = fold["candidates"][label]
                train = "–" if c["train_score"] is None else f"{c['train_score']:.1f}"
                cells.append(f"{train} @ {c['threshold']:.3f} → {c['test_raw_score']:.2f}")
            lines.append(
                f"| {fold['family']} | {len(fold['files'])} | "
                + " | ".join(cells)
                + f" | {fold['nested_choice']} |"
            )
    lines += [
        "",
        "## Per file",
        "",
        (
            "Raw NAB scores (null = no detection; a perfect file scores its window count). "
            "LOFO = leave-one-file-out threshold; product = `anomaly.threshold`."
        ),
        "",
        "| file | rows | windows | null | "
        + " | ".join(f"{PROFILE_LABELS[p]} LOFO thr / raw / FP rows" for p in shown)
        + " | Standard product raw / FP rows |",
        "|---|---:|---:|---:|" + "---:|" * (len(shown) + 1),
    ]
    standard = profiles.get("standard", profiles[shown[0]])
    for name in results["files"]:
        cells = []
        for p in shown:
            f = profiles[p]["files"][name]
            cells.append(f"{f['threshold']:.3f} / {f['raw_score']:.2f} / {f['fp_rows']}")
        s = standard["files"][name]
        lines.append(
            f"| {name} | {s['rows']} | {s['windows']} | {s['null_score']:.0f} | "
            + " | ".join(cells)
            + f" | {s['product_raw_score']:.2f} / {s['product_fp_rows']} |"
        )
    settings = ", ".join(f"{k}={v}" for k, v in results["settings"].items())
    lines += ["", f"Detector settings: {settings}.", ""]
    return "\n".join(lines)
