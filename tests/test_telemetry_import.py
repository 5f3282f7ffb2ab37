"""Hostile telemetry files: a corpus of one-defect files, each imported through the CLI.

Every case starts from the same good file (one service, one day at one-minute steps) and changes
one thing. Each is imported into a fresh home with ``forescale telemetry import``; a refused file
must exit with code 2 naming the file, the column and the rows (data rows counted from 1), store
nothing, write nothing outside the home, be quarantined with its report, and leave a good history
imported before it byte-identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from core.schema import (
    path_under,
    service_name_from_file,
    validate_service_name,
)
from core.settings import Settings
from pipelines.cli import app
from pipelines.telemetry import read_telemetry, write_telemetry
from pipelines.telemetry_files import describe_rows

runner = CliRunner()
DAY = pd.Timestamp("2026-11-01", tz="UTC")
ROWS = 1440


def good_frame() -> pd.DataFrame:
    """One service, one day at one-minute steps, every metric, ISO timestamps with ``Z``."""
    ts = pd.date_range(DAY, periods=ROWS, freq="1min")
    minutes = np.arange(ROWS)
    requests = 100 + 50 * np.sin(minutes / ROWS * 2 * np.pi)
    return pd.DataFrame(
        {
            "service": "api",
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "requests": requests.round(3),
            "cpu": (requests * 0.01).round(4),
            "latency_p95_ms": 80.0,
            "errors": (requests * 0.002).round(4),
        }
    )


def csv(name: str, frame: pd.DataFrame) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        frame.to_csv(folder / name, index=False)
        return folder / name

    return write


def raw(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return write


def set_cell(row: int, column: str, value: object) -> pd.DataFrame:
    """The good frame with one cell changed; ``row`` is the data row from 1."""
    frame = good_frame().astype({column: object})
    frame.loc[row - 1, column] = value
    return frame


def good_parquet(folder: Path) -> Path:
    frame = good_frame().assign(ts=lambda f: pd.to_datetime(f["ts"], utc=True))
    frame.to_parquet(folder / "good.parquet", index=False)
    return folder / "good.parquet"


def epoch(unit_factor: int) -> pd.DataFrame:
    frame = good_frame()
    seconds = pd.to_datetime(frame["ts"], utc=True).astype("int64") // 10**9
    return frame.assign(ts=seconds * unit_factor)


def future_day() -> pd.DataFrame:
    year = pd.Timestamp.now(tz="UTC").year + 5
    ts = pd.date_range(f"{year}-06-01", periods=ROWS, freq="1min", tz="UTC")
    return good_frame().assign(ts=ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def duplicate_row() -> pd.DataFrame:
    frame = good_frame()
    frame.loc[10, "ts"] = frame.loc[9, "ts"]  # rows 10 and 11 share a timestamp
    return frame


def gap() -> pd.DataFrame:
    return good_frame().drop(index=range(600, 645)).reset_index(drop=True)  # row 601 after 46 min


@dataclass(frozen=True)
class Case:
    """One corpus file and what a careful importer does with it.

    Attributes:
        write: Writes the file into a folder and returns its path.
        accepted: Whether the import succeeds.
        says: Text the output must contain (a note when accepted, the problem when refused).
        column: The column a refusal must name (None for whole-file problems).
        rows: The rows a refusal must name, as :func:`describe_rows` prints them.
    """

    write: Callable[[Path], Path]
    accepted: bool
    says: str
    column: str | None = None
    rows: str | None = None


CORPUS: dict[str, Case] = {
    # accepted, with what the importer decided said in the output
    "good": Case(csv("good.csv", good_frame()), True, "imported 1,440 rows"),
    "good_parquet": Case(good_parquet, True, "imported 1,440 rows"),
    "no_errors_column": Case(
        csv("noerrors.csv", good_frame().drop(columns=["errors"])),
        True,
        "optional column(s) ['errors'] absent",
    ),
    "epoch_seconds": Case(csv("epoch_s.csv", epoch(1)), True, "read as epoch seconds"),
    "epoch_milliseconds": Case(
        csv("epoch_ms.csv", epoch(1000)), True, "read as epoch milliseconds"
    ),
    "utc_offsets": Case(
        csv(
            "offsets.csv",
            good_frame().assign(
                ts=pd.to_datetime(good_frame()["ts"], utc=True)
                .dt.tz_convert("Europe/Berlin")
                .map(pd.Timestamp.isoformat)
            ),
        ),
        True,
        "converted to UTC",
    ),
    "unsorted_rows": Case(csv("unsorted.csv", good_frame().iloc[::-1]), True, "not in time order"),
    "extra_region_column": Case(
        csv("region.csv", good_frame().assign(region="eu-west-1")),
        True,
        "column(s) ['region'] are not telemetry columns",
    ),
    "zero_traffic_day": Case(
        csv("zero.csv", good_frame().assign(requests=0.0, errors=0.0)), True, "warning:"
    ),
    "trace_named_after_file": Case(
        csv("NASA_Http_1995.csv", good_frame()[["ts", "requests"]]),
        True,
        "service name 'nasa-http-1995' derived",
    ),
    # refused: file, column and rows named
    "service_escapes_home": Case(
        csv("escape.csv", set_cell(3, "service", "../../../ESCAPED")),
        False,
        "invalid service name",
        "service",
        "row 3",
    ),
    "service_etc_passwd": Case(
        csv("passwd.csv", good_frame().assign(service="../../etc/passwd")),
        False,
        "invalid service name",
        "service",
        "rows 1–1440",
    ),
    "service_uppercase": Case(
        csv("upper.csv", set_cell(8, "service", "API")),
        False,
        "invalid service name",
        "service",
        "row 8",
    ),
    "service_empty": Case(
        csv("emptyservice.csv", set_cell(5, "service", "")),
        False,
        "empty service name",
        "service",
        "row 5",
    ),
    "requests_nan": Case(
        csv("nan.csv", set_cell(7, "requests", np.nan)), False, "missing value", "requests", "row 7"
    ),
    "requests_not_a_number": Case(
        csv("abc.csv", set_cell(101, "requests", "abc")),
        False,
        "not a number, e.g. 'abc'",
        "requests",
        "row 101",
    ),
    "requests_negative": Case(
        csv("negative.csv", set_cell(50, "requests", -4.0)),
        False,
        "[non_negative]",
        "requests",
        "row 50",
    ),
    "cpu_infinite": Case(
        csv("inf.csv", set_cell(60, "cpu", np.inf)), False, "[max_value]", "cpu", "row 60"
    ),
    "duplicate_keys": Case(
        csv("dup.csv", duplicate_row()), False, "[unique_keys]", "ts", "rows 10–11"
    ),
    "gap_over_limit": Case(csv("gap.csv", gap()), False, "[max_gap]", "gap_minutes", "row 601"),
    "bad_timestamp": Case(
        csv("badts.csv", set_cell(30, "ts", "yesterday-ish")),
        False,
        "not a timestamp",
        "ts",
        "row 30",
    ),
    "future_day": Case(
        csv("future.csv", future_day()), False, "in the future", "ts", "rows 1–1440"
    ),
    "epoch_nanoseconds": Case(
        csv("epoch_ns.csv", epoch(10**9)),
        False,
        "nanoseconds are not accepted",
        "ts",
        "rows 1–1440",
    ),
    "missing_requests_column": Case(
        csv("norequests.csv", good_frame().drop(columns=["requests"])),
        False,
        "missing required column(s) ['requests']",
    ),
    "empty_file": Case(raw("empty.csv", b""), False, "the file is empty"),
    "header_only": Case(raw("header.csv", b"service,ts,requests\n"), False, "no data rows"),
    "binary_garbage": Case(
        raw("garbage.csv", np.random.default_rng(0).bytes(4096)), False, "not a CSV text file"
    ),
    "ragged_row": Case(
        raw(
            "ragged.csv",
            b"service,ts,requests\napi,2026-11-01T00:00:00Z,1\napi,2026-11-01T00:01:00Z,1,7\n",
        ),
        False,
        "line 3",
    ),
    "damaged_parquet": Case(
        raw("damaged.parquet", b"PAR1" + b"\x01" * 200), False, "not a readable Parquet file"
    ),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below a folder and its bytes."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_the_corpus_covers_the_issue() -> None:
    assert len(CORPUS) >= 23
    assert sum(case.accepted for case in CORPUS.values()) >= 8


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_file_is_handled_carefully(name: str, settings: Settings, tmp_path: Path) -> None:
    case = CORPUS[name]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    path = case.write(corpus)
    original = path.read_bytes()

    if case.accepted:
        result = runner.invoke(app, ["telemetry", "import", str(path)])
        assert result.exit_code == 0, result.output
        assert case.says in result.output
        stored = read_telemetry(settings)
        assert len(stored) == ROWS and stored["ts"].min() == DAY
        assert stored["ts"].is_monotonic_increasing
        assert not settings.quarantine_dir.exists() or not any(settings.quarantine_dir.iterdir())
    else:
        good = corpus / "history.csv"
        good_frame().to_csv(good, index=False)
        assert runner.invoke(app, ["telemetry", "import", str(good)]).exit_code == 0
        history = snapshot(settings.telemetry_dir)
        assert history
        outside = snapshot(tmp_path)

        result = runner.invoke(app, ["telemetry", "import", str(path)])

        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        problem = next(line for line in result.output.splitlines() if case.says in line)
        assert str(path) in problem
        if case.column is not None:
            assert f"'{case.column}'" in problem
        if case.rows is not None:
            assert case.rows in problem
        assert "nothing was stored" in result.output
        # Nothing stored, the good history byte-identical, nothing written outside the home.
        assert snapshot(settings.telemetry_dir) == history
        after = {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("home/")}
        assert after == {k: v for k, v in outside.items() if not k.startswith("home/")}
        assert not any(settings.staging_dir.iterdir())
        # The refused file is quarantined, unchanged, with a report naming its problems.
        copies = [p for p in settings.quarantine_dir.iterdir() if p.name == path.name]
        assert len(copies) == 1 and copies[0].read_bytes() == original
        report = json.loads(copies[0].with_name(path.name + ".report.json").read_text())
        assert report["file"] == str(path) and any(case.says in p for p in report["problems"])


def test_a_folder_with_one_bad_file_stores_nothing(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    good_frame().assign(service="web").to_csv(folder / "a.csv", index=False)
    set_cell(101, "requests", "abc").to_csv(folder / "b.csv", index=False)
    result = runner.invoke(app, ["telemetry", "import", str(folder)])
    assert result.exit_code == 2
    assert f"{folder / 'b.csv'}: column 'requests': row 101" in result.output
    assert read_telemetry(settings).empty


def test_validation_failures_name_each_file_of_a_folder(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    good_frame().to_csv(folder / "a.csv", index=False)
    set_cell(20, "requests", -1.0).assign(service="web").to_csv(folder / "b.csv", index=False)
    result = runner.invoke(app, ["telemetry", "import", str(folder)])
    assert result.exit_code == 2
    assert (
        f"{folder / 'b.csv'}: service 'web': row 20 (ts 2026-11-01T00:19:00+00:00" in result.output
    )
    assert "batch-" not in result.output.split("nothing was stored")[0]
    assert read_telemetry(settings).empty


def test_epoch_values_keep_their_instants(settings: Settings, tmp_path: Path) -> None:
    for name, factor in (("s.csv", 1), ("ms.csv", 1000)):
        epoch(factor).to_csv(tmp_path / name, index=False)
        assert runner.invoke(app, ["telemetry", "import", str(tmp_path / name)]).exit_code == 0
        stored = read_telemetry(settings)
        assert stored["ts"].tolist() == pd.date_range(DAY, periods=ROWS, freq="1min").tolist()
    assert [p.name for p in settings.telemetry_dir.glob("service=api/*")] == ["date=2026-11-01"]


def test_service_names_follow_one_rule() -> None:
    for good in ("api", "checkout", "svc-0001", "a", "x" * 63, "nasa-http-1995"):
        assert validate_service_name(good) == good
    for bad in ("", "API", "-api", "api-", "a_b", "../x", "a/b", "x" * 64, "nan\n", None, 3):
        with pytest.raises(ValueError, match="service name"):
            validate_service_name(bad)
    assert (
        service_name_from_file("nasa_http_1995_requests_per_minute")
        == "nasa-http-1995-requests-per-minute"
    )
    assert service_name_from_file("__WorldCup98__") == "worldcup98"
    assert len(service_name_from_file("a" * 100)) == 63
    with pytest.raises(ValueError, match="cannot derive"):
        service_name_from_file("___")


def test_the_store_refuses_paths_outside_its_folder(settings: Settings, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"service": ["ok", "../../../ESCAPED"], "ts": [DAY, DAY], "requests": [1.0, 2.0]}
    )
    with pytest.raises(ValueError, match="invalid service name"):
        write_telemetry(settings, frame)
    assert not (tmp_path / "ESCAPED").exists()
    assert not settings.telemetry_dir.exists() or not any(settings.telemetry_dir.rglob("*.parquet"))
    with pytest.raises(ValueError, match="outside"):
        path_under(settings.telemetry_dir, "service=x", "..", "..", "..", "y")
    assert path_under(settings.telemetry_dir, "service=x") == settings.telemetry_dir / "service=x"


def test_describe_rows_is_one_based_ranges() -> None:
    assert describe_rows([101]) == "row 101"
    assert describe_rows([3, 4, 5, 9]) == "rows 3–5, 9 (4 rows)"
    assert describe_rows(range(1, 30, 2), limit=2) == "rows 1, 3, … (15 rows)"
