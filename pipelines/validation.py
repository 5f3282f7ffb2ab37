"""Stage 2: validate an extracted telemetry batch with Great Expectations before it is stored.

A batch is a Parquet file in long format (see :mod:`core.schema`) covering the interval
``[start, end)``. :func:`validate_batch` checks it against the suite built by
:func:`build_expectation_suite`; a failing batch is moved to ``settings.quarantine_dir`` with a
JSON report beside it and :class:`BatchValidationError` is raised, so nothing downstream runs on it.

Great Expectations is imported lazily (it is slow to import and adjusts its own loggers on import);
its logs and progress bars are quieted when a validation runs, never at import of this module.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from core.params import section
from core.schema import (
    CPU,
    ERRORS,
    KEYS,
    LATENCY_P95,
    METRICS,
    REQUESTS,
    SERVICE,
    SERVICE_NAME_PATTERN,
    TS,
    utc_timestamp,
)
from core.settings import Settings
from pipelines.telemetry_files import describe_rows, shown

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )

GAP_COLUMN = "gap_minutes"
"""Derived column: minutes since the previous row of the same service (NaN on its first row)."""

SUITE_NAME = "telemetry_batch"

# How Great Expectations names the types of pandas columns it accepts for each kind of column:
# object columns are checked per value (``str``); a tz-aware timestamp column's scalar type is
# ``pandas.Timestamp`` (naive ones are ``numpy.datetime64`` and fail).
_SERVICE_TYPES = ["str", "StringDtype"]
_TS_TYPE = "Timestamp"
_NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "Float64", "Int64", "Int32"]


class BatchValidationError(ValueError):
    """A telemetry batch failed validation and was quarantined.

    Attributes:
        quarantined_path: Where the batch file was moved.
        report_path: The JSON report written beside it.
        failures: One human-readable line per failing expectation.
    """

    def __init__(
        self, message: str, quarantined_path: Path, report_path: Path, failures: list[str]
    ) -> None:
        super().__init__(message)
        self.quarantined_path = quarantined_path
        self.report_path = report_path
        self.failures = failures


@dataclass(frozen=True)
class ValidationLimits:
    """Plausibility limits for a batch (``validation`` section of ``params.yaml``).

    Attributes:
        max_gap_minutes: Largest allowed time between two consecutive rows of one service.
        max_requests_per_second: Upper bound for ``requests`` and ``errors``.
        max_cpu_cores: Upper bound for ``cpu``.
        max_latency_ms: Upper bound for ``latency_p95_ms``.
    """

    max_gap_minutes: float = 30.0
    max_requests_per_second: float = 1.0e6
    max_cpu_cores: float = 1.0e4
    max_latency_ms: float = 600_000.0


def load_validation_limits(settings: Settings) -> ValidationLimits:
    """Read the ``validation`` section of the params file.

    Args:
        settings: Settings naming the params file.

    Returns:
        The limits; keys missing from the file keep their defaults.

    Raises:
        ValueError: If the file or section is missing, or has unknown keys or non-numeric values.
    """
    values = section(settings.params_file, "validation")
    known = set(asdict(ValidationLimits()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{settings.params_file}: unknown validation parameter(s) {unknown}")
    try:
        return ValidationLimits(**{key: float(value) for key, value in values.items()})
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{settings.params_file}: validation parameters must be numbers: {err}"
        ) from err


def build_expectation_suite(
    start: datetime, end: datetime, limits: ValidationLimits, metrics: Sequence[str] = METRICS
) -> ExpectationSuite:
    """Build the expectation suite for a batch covering ``[start, end)``.

    Every expectation carries ``meta["rule"]``, the name used in error messages and reports:
    ``schema``, ``type``, ``service_name`` (:data:`core.schema.SERVICE_NAME_PATTERN`),
    ``not_null``, ``non_negative``, ``max_value``, ``unique_keys``, ``in_interval`` and
    ``max_gap`` (on the derived column :data:`GAP_COLUMN`, see :func:`add_gap_column`).

    Args:
        start: Inclusive start of the batch interval (naive values are taken as UTC).
        end: Exclusive end of the batch interval.
        limits: Plausibility limits.
        metrics: The metric columns the batch must have and that are checked; ``requests``
            is always among them (see :func:`batch_metrics`).

    Returns:
        An unsaved ``great_expectations`` ``ExpectationSuite``.
    """
    import great_expectations as gx

    expect = gx.expectations
    start_utc, end_utc = utc_timestamp(start), utc_timestamp(end)
    metrics = list(dict.fromkeys([REQUESTS, *metrics]))
    upper_bounds = {
        REQUESTS: limits.max_requests_per_second,
        CPU: limits.max_cpu_cores,
        LATENCY_P95: limits.max_latency_ms,
        ERRORS: limits.max_requests_per_second,
    }
    upper_bounds = {metric: upper_bounds[metric] for metric in metrics if metric in upper_bounds}
    expectations: list[Any] = [
        expect.ExpectTableColumnsToMatchSet(
            column_set=[*KEYS, *metrics], exact_match=False, meta={"rule": "schema"}
        ),
        expect.ExpectColumnValuesToBeInTypeList(
            column=SERVICE, type_list=_SERVICE_TYPES, meta={"rule": "type"}
        ),
        expect.ExpectColumnValuesToBeOfType(column=TS, type_=_TS_TYPE, meta={"rule": "type"}),
        expect.ExpectColumnValuesToMatchRegex(
            column=SERVICE,
            regex=f"^{SERVICE_NAME_PATTERN.pattern}$",
            meta={"rule": "service_name"},
        ),
    ]
    expectations += [
        expect.ExpectColumnValuesToBeInTypeList(
            column=metric, type_list=_NUMERIC_TYPES, meta={"rule": "type"}
        )
        for metric in metrics
    ]
    expectations += [
        expect.ExpectColumnValuesToNotBeNull(column=key, meta={"rule": "not_null"}) for key in KEYS
    ]
    expectations += [
        expect.ExpectColumnValuesToBeBetween(
            column=metric, min_value=0, meta={"rule": "non_negative"}
        )
        for metric in metrics
    ]
    expectations += [
        expect.ExpectColumnValuesToBeBetween(
            column=metric, max_value=bound, meta={"rule": "max_value"}
        )
        for metric, bound in upper_bounds.items()
    ]
    expectations += [
        expect.ExpectCompoundColumnsToBeUnique(
            column_list=list(KEYS), meta={"rule": "unique_keys"}
        ),
        expect.ExpectColumnValuesToBeBetween(
            column=TS,
            min_value=start_utc.to_pydatetime(),
            max_value=end_utc.to_pydatetime(),
            strict_max=True,
            meta={"rule": "in_interval"},
        ),
        expect.ExpectColumnValuesToBeBetween(
            column=GAP_COLUMN, max_value=limits.max_gap_minutes, meta={"rule": "max_gap"}
        ),
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def batch_metrics(batch: pd.DataFrame) -> list[str]:
    """The metric columns a batch is checked on: ``requests`` (required) and every other metric
    it has (``cpu``, ``latency_p95_ms`` and ``errors`` are optional)."""
    return [REQUESTS, *(m for m in METRICS if m != REQUESTS and m in batch.columns)]


def add_gap_column(batch: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of the batch with :data:`GAP_COLUMN` added.

    The gap of a row is the time in minutes since the previous row of the same service in time
    order (NaN for each service's first row, which the expectation ignores). The frame's index
    and row order are kept, so failing rows are reported at their position in the batch file.
    A batch whose keys are missing or not timestamps gets an all-NaN column: the schema and type
    expectations report it instead.

    Args:
        batch: The batch as read from its file.

    Returns:
        The batch with the gap column.
    """
    out = batch.copy()
    out[GAP_COLUMN] = float("nan")
    if SERVICE not in out.columns or TS not in out.columns:
        return out
    if not isinstance(out[TS].dtype, pd.DatetimeTZDtype):
        return out
    ordered = out[[SERVICE, TS]].dropna().sort_values([SERVICE, TS], kind="stable")
    gaps = ordered.groupby(SERVICE, sort=False)[TS].diff() / pd.Timedelta(minutes=1)
    out.loc[gaps.index, GAP_COLUMN] = gaps
    return out


def validate_batch(
    settings: Settings,
    batch_path: Path,
    start: datetime,
    end: datetime,
    origin: pd.DataFrame | None = None,
) -> Path:
    """Validate a staged batch; quarantine it and raise if any expectation fails.

    Args:
        settings: Runtime settings (``quarantine_dir``, params file).
        batch_path: The staged Parquet batch.
        start: Inclusive start of the interval the batch was extracted for.
        end: Exclusive end of that interval.
        origin: For a batch read from the user's files: one row per batch row with columns
            ``file`` and ``row`` (data row in that file, from 1); failures then name these
            instead of batch row positions.

    Returns:
        ``batch_path``, unchanged, when every expectation passes.

    Raises:
        BatchValidationError: If the batch fails; the file was moved to
            ``settings.quarantine_dir / batch_path.name`` with a JSON report beside it, and the
            message names each failing expectation, its column, the services and row ranges.
        ValueError: If ``start`` is not before ``end``, or ``origin`` does not match the batch.
        FileNotFoundError: If the batch file does not exist.
    """
    batch_path = Path(batch_path)
    if utc_timestamp(start) >= utc_timestamp(end):
        raise ValueError(f"validation interval is empty: start {start} is not before end {end}")
    if not batch_path.is_file():
        raise FileNotFoundError(f"batch file {batch_path} does not exist")
    batch = pd.read_parquet(batch_path).reset_index(drop=True)  # row labels = file positions
    if origin is not None and len(origin) != len(batch):
        raise ValueError(f"origin has {len(origin)} rows, the batch {len(batch)}")
    frame = add_gap_column(batch)
    suite = build_expectation_suite(
        start, end, load_validation_limits(settings), batch_metrics(batch)
    )
    result = run_suite(frame, suite)
    if result.success:
        return batch_path

    failures = [
        describe_failure(item, frame, origin) for item in result.results if not item.success
    ]
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    quarantined = _free_quarantine_path(settings.quarantine_dir, batch_path)
    report_path = quarantined.with_suffix(".report.json")
    what = (
        f"batch {batch_path.name}"
        if origin is None
        else ", ".join(dict.fromkeys(str(f) for f in origin["file"]))
    )
    report = {
        "batch": batch_path.name,
        "source_path": str(batch_path),
        "source_files": None if origin is None else list(dict.fromkeys(map(str, origin["file"]))),
        "interval": {
            "start": utc_timestamp(start).isoformat(),
            "end": utc_timestamp(end).isoformat(),
        },
        "rows": len(batch),
        "failures": failures,
        "results": result.to_json_dict(),
    }
    report_path.write_text(json.dumps(report, indent=2, default=str))
    shutil.move(batch_path, quarantined)
    message = (
        f"{what} ({len(batch)} rows, interval [{utc_timestamp(start).isoformat()}, "
        f"{utc_timestamp(end).isoformat()})) failed {len(failures)} expectation(s) and was quarantined "
        f"to {quarantined} (report {report_path}):\n" + "\n".join(f"- {f}" for f in failures)
    )
    raise BatchValidationError(message, quarantined, report_path, failures)


def quarantine_file(settings: Settings, path: Path, problems: list[str]) -> tuple[Path, Path]:
    """Copy a refused input file to the quarantine folder with a JSON report of its problems.

    Args:
        settings: Runtime settings (``quarantine_dir``).
        path: The refused file (left where it is).
        problems: One line per problem.

    Returns:
        The quarantined copy and its report.
    """
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    copy = _free_quarantine_path(settings.quarantine_dir, Path(path))
    report_path = copy.with_name(copy.name + ".report.json")
    report_path.write_text(json.dumps({"file": str(path), "problems": problems}, indent=2))
    shutil.copyfile(path, copy)
    return copy, report_path


def _free_quarantine_path(folder: Path, batch_path: Path) -> Path:
    """Where a failed batch goes: its own name, or ``<stem>.<n>.parquet`` if that is taken.

    Two bad batches for the same interval (e.g. two imports) must both be kept.
    """
    candidate, attempt = folder / batch_path.name, 1
    while candidate.exists():
        candidate = folder / f"{batch_path.stem}.{attempt}{batch_path.suffix}"
        attempt += 1
    return candidate


def run_suite(frame: pd.DataFrame, suite: ExpectationSuite) -> ExpectationSuiteValidationResult:
    """Run a suite on a frame in an ephemeral Great Expectations context.

    Args:
        frame: The data to validate (a whole-dataframe batch).
        suite: The expectations.

    Returns:
        The suite result, with complete failing-row indices.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    _quiet_great_expectations()
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
        ),
    )
    batch_definition = (
        context.data_sources.add_pandas("telemetry")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole_batch")
    )
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite, result_format="COMPLETE")


def describe_failure(
    item: ExpectationValidationResult, frame: pd.DataFrame, origin: pd.DataFrame | None = None
) -> str:
    """One line naming a failed expectation, its rule and column, and the offending rows.

    Args:
        item: A failed expectation result.
        frame: The validated frame (to map row indices to services and timestamps).
        origin: The user's file and row of each batch row (see :func:`validate_batch`).

    Returns:
        E.g. ``expect_column_values_to_be_between [non_negative] column 'cpu': 3 row(s) ...``.
    """
    config = item.expectation_config
    rule = (config.meta or {}).get("rule", "?")
    kwargs = config.kwargs
    columns = kwargs.get("column") or kwargs.get("column_list") or kwargs.get("column_set")
    where = f"column {columns!r}" if isinstance(columns, str) else f"columns {list(columns or [])}"
    head = f"{config.type} [{rule}] {where}"
    errors = _exception_messages(item.exception_info or {})
    if errors:
        return f"{head}: could not be evaluated: {'; '.join(errors)}"
    details = item.result or {}
    if rule == "schema":
        mismatched = (details.get("details") or {}).get("mismatched", {})
        return (
            f"{head}: missing column(s) {mismatched.get('missing', [])}; "
            f"table has {details.get('observed_value')}"
        )
    if "unexpected_index_list" not in details:
        return f"{head}: observed {details.get('observed_value')!r}"
    indices = list(details["unexpected_index_list"])
    if rule == "max_gap":
        return (
            f"{head} (max {kwargs.get('max_value')} min): {len(indices)} row(s) after a gap; "
            + _row_ranges(frame, indices, gaps=True, origin=origin)
        )
    sample = ", ".join(shown(v) for v in list(details.get("partial_unexpected_list") or [])[:5])
    return f"{head}: {len(indices)} unexpected row(s), e.g. [{sample}]; " + _row_ranges(
        frame, indices, origin=origin
    )


def _row_ranges(
    frame: pd.DataFrame,
    indices: Sequence[Any],
    gaps: bool = False,
    origin: pd.DataFrame | None = None,
) -> str:
    """Describe failing rows per service: row range (batch positions, or the user's file and
    rows) and timestamp range."""
    if not indices:
        return "no rows identified"
    rows = frame.loc[list(indices)]
    if SERVICE not in rows.columns or TS not in rows.columns:
        return f"rows {_span(indices)}"
    services = rows[SERVICE].astype(object).where(rows[SERVICE].notna(), "<null>").astype(str)
    files = (
        origin["file"].loc[rows.index].astype(str)
        if origin is not None
        else pd.Series("", index=rows.index)
    )
    parts = []
    for (file, service), group in rows.groupby([files, services], sort=True):
        if origin is None:
            where = f"service {service!r}: rows {_span(group.index)}"
        else:
            where = f"{file}: service {service!r}: {describe_rows(origin['row'].loc[group.index])}"
        text = f"{where} (ts {_ts_text(group[TS].min())} – {_ts_text(group[TS].max())})"
        if gaps:
            text += f", gaps up to {group[GAP_COLUMN].max():g} min"
        parts.append(text)
    return "; ".join(parts)


def _exception_messages(info: dict[str, Any]) -> list[str]:
    """Exception messages of a result: flat, or keyed by metric when a metric failed."""
    if info.get("raised_exception"):
        return [str(info.get("exception_message"))]
    return sorted(
        {
            str(value.get("exception_message"))
            for value in info.values()
            if isinstance(value, dict) and value.get("exception_message")
        }
    )


def _span(indices: Iterable[Any]) -> str:
    values = sorted(indices)
    return f"{values[0]}–{values[-1]} ({len(values)} row(s))"


def _ts_text(value: Any) -> str:
    return "NaT" if pd.isna(value) else pd.Timestamp(value).isoformat()


def _quiet_great_expectations() -> None:
    """Lower Great Expectations' loggers to WARNING (some set INFO on themselves at import)."""
    for name in list(logging.root.manager.loggerDict):
        if name == "great_expectations" or name.startswith("great_expectations."):
            logging.getLogger(name).setLevel(logging.WARNING)
