"""Reading one telemetry file from outside, carefully: every problem named by file, column and rows.

:func:`read_telemetry_file` turns a CSV or Parquet file into long-format telemetry or refuses it
with :class:`TelemetryFileError`, one line per problem. Rows are the file's data rows counted from
1 (the header is not a row: row 1 is line 2 of a CSV). The policies (see the README, "Importing
telemetry files"):

* required columns ``service``, ``ts``, ``requests`` (a two-column ``time, value`` trace is one
  service, named by ``--service`` or derived from the file name); ``cpu``, ``latency_p95_ms``,
  ``errors`` and ``replicas`` are optional; any other column is not imported, with a note;
* service names follow :data:`core.schema.SERVICE_NAME_PATTERN`; an empty or invalid one is
  refused;
* timestamps are ISO text (naive means UTC, offsets are converted) or epoch numbers, recognised by
  magnitude as seconds (``1e8 <= t < 1e11``) or milliseconds (``1e11 <= t < 1e14``); anything
  else, unparseable text and timestamps later than now + :data:`FUTURE_TOLERANCE` are refused;
* a metric value that is empty or not a number is refused (never stored over a good value);
* a service whose requests are all zero for a day is imported with a warning.

:func:`import_telemetry` is ``forescale telemetry import``: read every file, validate the rows as
one batch with the Great Expectations suite, store them, or quarantine what was refused and store
nothing.
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.schema import (
    CPU,
    ERRORS,
    LATENCY_P95,
    METRICS,
    REPLICAS,
    REQUESTS,
    SERVICE,
    SERVICE_NAME_RULE,
    TS,
    TS_DTYPE,
    is_service_name,
    service_name_from_file,
    utc_timestamp,
    validate_service_name,
)

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

FUTURE_TOLERANCE = pd.Timedelta(minutes=10)
"""How far past the current time a timestamp may be (clock skew between hosts)."""

EPOCH_UNITS: tuple[tuple[str, float, float], ...] = (
    ("s", 1e8, 1e11),  # 1973-03-03 .. 5138
    ("ms", 1e11, 1e14),  # 1973-03-03 .. 5138 in milliseconds
)
"""Epoch numbers accepted in a time column: (pandas unit, lowest, highest exclusive)."""

UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}
_SNIFF_BYTES = 65536
_OFFSET = re.compile(r"[+-]\d\d:?\d\d$")


class TelemetryFileError(ValueError):
    """A telemetry file was refused; the message has one line per problem.

    Attributes:
        path: The refused file.
        problems: One line per problem, each naming the file, the column and the rows.
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.path = path
        self.problems = problems


class TelemetryImportError(ValueError):
    """An import was refused: nothing was stored and the refused files were quarantined.

    Attributes:
        problems: One line per problem.
        quarantined: The quarantined copies of the refused files (reports beside them).
    """

    def __init__(self, problems: list[str], quarantined: list[Path]) -> None:
        where = ", ".join(str(p) for p in quarantined)
        super().__init__("\n".join([*problems, f"nothing was stored; quarantined: {where}"]))
        self.problems = problems
        self.quarantined = quarantined


@dataclass
class TelemetryFile:
    """A telemetry file that passed :func:`read_telemetry_file`.

    Attributes:
        path: The file.
        frame: Long-format telemetry in the file's row order (``service``, ``ts``, metrics).
        rows: The file's data row number (from 1) of each frame row.
        notes: What the reader decided on the user's behalf, one line each.
    """

    path: Path
    frame: pd.DataFrame
    rows: np.ndarray
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportResult:
    """What an import stored.

    Attributes:
        rows: Rows stored.
        services: Services stored, sorted.
        files_written: Day files written.
        notes: One line per decision the reader took (units, dropped columns, warnings).
    """

    rows: int
    services: list[str]
    files_written: list[Path]
    notes: list[str]


def describe_rows(rows: Sequence[int] | np.ndarray, limit: int = 6) -> str:
    """Row numbers as ranges, e.g. ``row 7`` or ``rows 3–5, 9 (4 rows)``.

    Args:
        rows: Row numbers (any order, duplicates ignored).
        limit: How many ranges to show before ``…``.
    """
    values = sorted({int(r) for r in rows})
    if len(values) == 1:
        return f"row {values[0]}"
    ranges: list[tuple[int, int]] = []
    for value in values:
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], value)
        else:
            ranges.append((value, value))
    text = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in ranges[:limit])
    if len(ranges) > limit:
        text += ", …"
    return f"rows {text} ({len(values)} rows)"


def shown(value: object, width: int = 40) -> str:
    """A value from outside as a short ``repr`` (never echoes kilobytes of input)."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_telemetry_file(
    path: Path,
    service: str | None = None,
    value_per: str = "second",
    now: pd.Timestamp | None = None,
) -> TelemetryFile:
    """Read one CSV or Parquet telemetry file, or refuse it naming every problem.

    Args:
        path: The file.
        service: Service name of a single-trace file (default: derived from the file name).
        value_per: ``second``, ``minute`` (counts per minute) or ``step`` (counts per row
            interval) for a single trace's values.
        now: The current time (for the future-timestamp rule); defaults to the clock.

    Returns:
        The telemetry with the file's row numbers and the reader's notes.

    Raises:
        TelemetryFileError: If the file is refused; one message line per problem.
        ValueError: If ``value_per`` or ``service`` is not valid.
    """
    if value_per not in {"second", "minute", "step"}:
        raise ValueError(f"value_per must be 'second', 'minute' or 'step', got {value_per!r}")
    if service is not None:
        validate_service_name(service)
    path = Path(path)
    raw = _read_table(path)
    problems: list[str] = []
    notes: list[str] = []
    columns = [str(c) for c in raw.columns]
    if len(columns) == 2 and SERVICE not in columns:
        frame = _single_trace(path, raw, service, value_per, problems, notes)
    elif SERVICE in columns or TS in columns or any(m in columns for m in METRICS):
        frame = _long_format(path, raw, problems, notes)
    else:
        layout = (
            f"{path}: expected long format (columns {SERVICE}, {TS}, {REQUESTS}[, {CPU}, "
            f"{LATENCY_P95}, {ERRORS}]) or a two-column trace (time, value); found columns "
            f"{_names(columns)}"
        )
        raise TelemetryFileError(path, [layout])
    rows = np.arange(1, len(raw) + 1)
    if not problems:
        _check_future(path, frame, rows, now, problems)
    if problems:
        raise TelemetryFileError(path, problems)
    _note_order_and_zero_days(path, frame, notes)
    return TelemetryFile(path, frame, rows, notes)


def import_telemetry(
    settings: Settings,
    path: Path,
    service: str | None = None,
    value_per: str = "second",
    now: pd.Timestamp | None = None,
) -> ImportResult:
    """Import a file or a folder of files: read, validate as one batch, store; or refuse all.

    Every file is read with :func:`read_telemetry_file`; their rows are validated together by
    :func:`pipelines.validation.validate_batch` (failures name the user's file and rows). If any
    file or the batch is refused, nothing is stored and each refused file is copied to the
    quarantine folder with a JSON report of its problems.

    Args:
        settings: Runtime settings.
        path: A file, or a folder whose ``*.csv`` and ``*.parquet`` files are all read.
        service: Service name of single-trace files.
        value_per: Unit of single-trace values (see :func:`read_telemetry_file`).
        now: The current time (for the future-timestamp rule); defaults to the clock.

    Returns:
        What was stored.

    Raises:
        TelemetryImportError: If a file or the batch was refused.
        ValueError: If the path holds no telemetry file or an argument is invalid.
    """
    from pipelines.telemetry import FileSource, stage_frame, store_batch
    from pipelines.validation import BatchValidationError, quarantine_file, validate_batch

    files = FileSource(path).files()
    read: list[TelemetryFile] = []
    refused: list[TelemetryFileError] = []
    for file in files:
        try:
            read.append(read_telemetry_file(file, service, value_per, now))
        except TelemetryFileError as err:
            refused.append(err)
    if refused:
        quarantined = [quarantine_file(settings, err.path, err.problems)[0] for err in refused]
        raise TelemetryImportError([p for err in refused for p in err.problems], quarantined)

    frame = pd.concat([f.frame for f in read], ignore_index=True)
    origin = pd.DataFrame(
        {
            "file": np.concatenate([np.full(len(f.rows), str(f.path), dtype=object) for f in read]),
            "row": np.concatenate([f.rows for f in read]),
        }
    )
    start, end = frame[TS].min(), frame[TS].max() + pd.Timedelta(seconds=1)
    batch = stage_frame(settings, frame, start, end)
    try:
        validate_batch(settings, batch, start, end, origin=origin)
    except BatchValidationError as err:
        quarantined = [quarantine_file(settings, f.path, err.failures)[0] for f in read]
        raise TelemetryImportError(err.failures, [err.quarantined_path, *quarantined]) from err
    written = store_batch(settings, batch)
    return ImportResult(
        len(frame), sorted(frame[SERVICE].unique()), written, [n for f in read for n in f.notes]
    )


# --------------------------------------------------------------------------- reading the table


def _read_table(path: Path) -> pd.DataFrame:
    """The file as a table of text (CSV) or typed (Parquet) columns, or one refusal line."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise TelemetryFileError(path, [f"{path}: cannot be read: {err.strerror}"]) from err
    if size == 0:
        raise TelemetryFileError(path, [f"{path}: the file is empty (no header, no rows)"])
    if path.suffix == ".parquet":
        try:
            raw = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise TelemetryFileError(
                path, [f"{path}: not a readable Parquet file ({shown(str(err), 120)})"]
            ) from err
    else:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
            text = b"\0" not in head
        except UnicodeDecodeError:
            text = False
        if not text:
            raise TelemetryFileError(
                path, [f"{path}: not a CSV text file (binary content, or not UTF-8)"]
            )
        try:
            raw = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skipinitialspace=True)
        except pd.errors.EmptyDataError as err:
            raise TelemetryFileError(path, [f"{path}: the file has no header and no rows"]) from err
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise TelemetryFileError(
                path, [f"{path}: not a valid CSV: {shown(message, 160)}"]
            ) from err
    raw.columns = [str(c).strip() for c in raw.columns]
    if raw.empty:
        raise TelemetryFileError(
            path, [f"{path}: no data rows (only the header {_names(raw.columns)})"]
        )
    return raw.reset_index(drop=True)


def _long_format(
    path: Path, raw: pd.DataFrame, problems: list[str], notes: list[str]
) -> pd.DataFrame:
    missing = [c for c in (SERVICE, TS, REQUESTS) if c not in raw.columns]
    if missing:
        raise TelemetryFileError(
            path, [f"{path}: missing required column(s) {missing}; it has {_names(raw.columns)}"]
        )
    duplicated = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    if duplicated:
        raise TelemetryFileError(path, [f"{path}: column(s) {duplicated} appear more than once"])
    extra = [c for c in raw.columns if c not in (SERVICE, TS, *METRICS, REPLICAS)]
    if extra:
        notes.append(
            f"{path}: column(s) {_names(extra)} are not telemetry columns and were not imported"
        )
    absent = [c for c in METRICS if c not in raw.columns]
    if absent:
        notes.append(f"{path}: optional column(s) {absent} absent: imported without them")
    out = pd.DataFrame(
        {
            SERVICE: _service_column(path, raw[SERVICE], problems),
            TS: _time_column(path, raw[TS], TS, problems, notes),
        }
    )
    for metric in [c for c in (*METRICS, REPLICAS) if c in raw.columns]:
        out[metric] = _number_column(path, raw[metric], metric, problems)
    return out


def _single_trace(
    path: Path,
    raw: pd.DataFrame,
    service: str | None,
    value_per: str,
    problems: list[str],
    notes: list[str],
) -> pd.DataFrame:
    time_col, value_col = raw.columns
    if service is None:
        try:
            service = service_name_from_file(path.stem)
        except ValueError as err:
            raise TelemetryFileError(path, [f"{path}: {err}; use --service"]) from err
        notes.append(f"{path}: a single trace; service name {service!r} derived from the file name")
    ts = _time_column(path, raw[time_col], time_col, problems, notes)
    values = _number_column(path, raw[value_col], value_col, problems)
    if value_per == "minute":
        values = values / 60.0
    elif value_per == "step" and not problems:
        step_s = ts.sort_values().diff().dropna().dt.total_seconds().median()
        if not step_s or np.isnan(step_s):
            problems.append(
                f"{path}: column {time_col!r}: cannot infer the row interval for --value-per step"
            )
        else:
            values = values / step_s
    return pd.DataFrame({SERVICE: service, TS: ts, REQUESTS: values})


# --------------------------------------------------------------------------- columns


def _service_column(path: Path, column: pd.Series, problems: list[str]) -> pd.Series:
    text = column.astype(object).where(column.notna(), None)
    empty = text.isna() | (text.astype(str).str.strip() == "")
    if empty.any():
        problems.append(_cells(path, SERVICE, empty, "empty service name"))
    invalid = ~empty & ~text.map(is_service_name).astype(bool)
    if invalid.any():
        problems.append(
            _cells(
                path, SERVICE, invalid, "invalid service name(s)", text, f": {SERVICE_NAME_RULE}"
            )
        )
    return text.where(~(empty | invalid), "").astype(str)


def _number_column(path: Path, column: pd.Series, name: str, problems: list[str]) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        problems.append(f"{path}: column {name!r}: holds true/false, not numbers")
        return pd.Series(np.nan, index=column.index)
    values = pd.to_numeric(column, errors="coerce").astype(float)
    missing = column.isna() | (column.astype(str).str.strip() == "")
    not_numbers = values.isna() & ~missing
    if not_numbers.any():
        problems.append(_cells(path, name, not_numbers, "not a number", column))
    if missing.any():
        problems.append(
            _cells(
                path,
                name,
                missing,
                "missing value (fill it, or leave the column out if it is optional)",
            )
        )
    return values


def _time_column(
    path: Path, column: pd.Series, name: str, problems: list[str], notes: list[str]
) -> pd.Series:
    """Parse a time column to UTC; NaT where a problem was recorded."""
    failed = pd.Series(pd.NaT, index=column.index, dtype=TS_DTYPE)
    missing = column.isna() | (column.astype(str).str.strip() == "")
    if missing.any():
        problems.append(_cells(path, name, missing, "missing timestamp"))
    if isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column):
        if not isinstance(column.dtype, pd.DatetimeTZDtype):
            notes.append(f"{path}: column {name!r} has no time zone: read as UTC")
        stamps = pd.to_datetime(column, utc=True)
        return stamps.dt.tz_convert("UTC").astype(TS_DTYPE)
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().sum() > 0 and numbers.notna().sum() == (~missing).sum():
        return _epoch_column(path, numbers, name, problems, notes)
    text = column.astype(str).str.strip().where(~missing, None)
    stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    retry = stamps.isna() & ~missing & text.str.contains(r"\D", na=False)
    if retry.any():
        stamps[retry] = pd.to_datetime(text[retry], utc=True, format="mixed", errors="coerce")
    bad = stamps.isna() & ~missing
    if bad.any():
        problems.append(
            _cells(
                path,
                name,
                bad,
                "not a timestamp",
                column,
                " (use ISO 8601, e.g. 2026-11-01T00:00:00Z, or epoch seconds or milliseconds)",
            )
        )
        return failed
    given = text[~missing]
    offsets = given.str.contains(_OFFSET) | given.str.upper().str.endswith("Z")
    if not offsets.all():
        notes.append(
            f"{path}: column {name!r}: {int((~offsets).sum())} timestamp(s) without a "
            f"time zone: read as UTC"
        )
    if (given.str.contains(_OFFSET) & ~given.str.contains(r"[+-]00:?00$")).any():
        notes.append(f"{path}: column {name!r}: timestamps with UTC offsets converted to UTC")
    return stamps.astype(TS_DTYPE)


def _epoch_column(
    path: Path, numbers: pd.Series, name: str, problems: list[str], notes: list[str]
) -> pd.Series:
    """Epoch numbers: all seconds or all milliseconds by magnitude, else refused."""
    failed = pd.Series(pd.NaT, index=numbers.index, dtype=TS_DTYPE)
    given = numbers.notna()
    units = pd.Series(None, index=numbers.index, dtype=object)
    for unit, low, high in EPOCH_UNITS:
        units[given & (numbers >= low) & (numbers < high)] = unit
    outside = given & units.isna()
    if outside.any():
        accepted = " nor ".join(
            f"{UNIT_NAMES[unit]} ({low:.0e} to {high:.0e})" for unit, low, high in EPOCH_UNITS
        )
        problems.append(
            _cells(
                path,
                name,
                outside,
                f"epoch number(s) that are neither {accepted}",
                numbers,
                "; microseconds and nanoseconds are not accepted",
            )
        )
        return failed
    found = units[given].value_counts()
    if len(found) > 1:
        minority = found.index[-1]
        problems.append(
            _cells(
                path,
                name,
                units == minority,
                f"epoch {UNIT_NAMES[minority]} "
                f"among {UNIT_NAMES[found.index[0]]}: one unit per file",
            )
        )
        return failed
    unit = str(found.index[0])
    notes.append(f"{path}: column {name!r} read as epoch {UNIT_NAMES[unit]} (Unix time, UTC)")
    return pd.to_datetime(numbers, unit=unit, utc=True).astype(TS_DTYPE)


# --------------------------------------------------------------------------- whole-file rules


def _check_future(
    path: Path, frame: pd.DataFrame, rows: np.ndarray, now: pd.Timestamp | None, problems: list[str]
) -> None:
    limit = utc_timestamp(now if now is not None else pd.Timestamp.now(tz="UTC"))
    future = (frame[TS] > limit + FUTURE_TOLERANCE).to_numpy()
    if future.any():
        problems.append(
            f"{path}: column {TS!r}: {describe_rows(rows[future])}: in the future (after "
            f"{limit.floor('s').isoformat()} + {int(FUTURE_TOLERANCE.total_seconds() // 60)} min), "
            f"e.g. {frame[TS][future].iloc[0].isoformat()}"
        )


def _note_order_and_zero_days(path: Path, frame: pd.DataFrame, notes: list[str]) -> None:
    in_order = frame.groupby(SERVICE, sort=False)[TS].apply(lambda s: s.is_monotonic_increasing)
    if not in_order.all():
        notes.append(f"{path}: rows are not in time order: stored sorted by ({SERVICE}, {TS})")
    days = frame[TS].dt.strftime("%Y-%m-%d")
    zero = frame.groupby([frame[SERVICE], days])[REQUESTS].agg(lambda s: bool((s == 0).all()))
    for (service, day), all_zero in zero.items():
        if all_zero:
            notes.append(
                f"warning: {path}: service {service!r} has zero {REQUESTS} in every row "
                f"of {day}: imported as zero traffic; check the source if it was not"
            )


def _names(columns: Sequence[object], limit: int = 12) -> str:
    """Column names from outside as a short list, e.g. ``['region', 'zone']``."""
    names = [shown(str(c)) for c in list(columns)[:limit]]
    return "[" + ", ".join(names) + (", …" if len(columns) > limit else "") + "]"


def _cells(
    path: Path,
    column: str,
    mask: pd.Series,
    what: str,
    values: pd.Series | None = None,
    then: str = "",
) -> str:
    """One problem line: file, column, the rows where ``mask`` holds, what is wrong, examples."""
    line = f"{path}: column {column!r}: {describe_rows(_rows(mask))}: {what}"
    if values is not None:
        line += ", e.g. " + ", ".join([shown(v) for v in dict.fromkeys(values[mask].tolist())][:3])
    return line + then


def _rows(mask: pd.Series) -> np.ndarray:
    """File row numbers (from 1) where a mask over the file's rows is true."""
    return np.flatnonzero(mask.to_numpy()) + 1
