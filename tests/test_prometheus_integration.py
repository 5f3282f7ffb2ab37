"""The Prometheus source against a real Prometheus server holding backfilled samples."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest

from core.schema import CPU, REQUESTS, SERVICE, TS
from pipelines.telemetry import PrometheusSource

pytestmark = pytest.mark.integration

START = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(days=2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.skip("prometheus/promtool not installed (apt-get install prometheus)")
    base = tmp_path_factory.mktemp("prometheus")
    lines = ["# TYPE app_requests_per_second gauge", "# TYPE app_cpu_cores gauge"]
    for minute in range(30):
        stamp = int((START + pd.Timedelta(minutes=minute)).timestamp())
        for service, scale in (("api", 1.0), ("web", 10.0)):
            lines.append(f'app_requests_per_second{{service="{service}"}} {scale * minute} {stamp}')
            lines.append(f'app_cpu_cores{{service="{service}"}} {scale / 10} {stamp}')
    lines.append("# EOF")
    (base / "samples.om").write_text("\n".join(lines) + "\n")
    data = base / "data"
    subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(base / "samples.om"),
            str(data),
        ],
        check=True,
        capture_output=True,
    )
    (base / "prometheus.yml").write_text("global:\n  scrape_interval: 1h\n")
    port = _free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("Prometheus did not become ready")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_query_range_returns_long_format_per_service(prometheus: str) -> None:
    source = PrometheusSource(
        prometheus,
        {
            REQUESTS: "sum by (service) (app_requests_per_second)",
            CPU: "sum by (service) (app_cpu_cores)",
        },
    )
    frame = source.fetch(START, START + pd.Timedelta(minutes=10))
    assert sorted(frame[SERVICE].unique()) == ["api", "web"]
    assert frame.groupby(SERVICE).size().eq(10).all()
    web = frame[frame[SERVICE] == "web"].sort_values(TS)
    assert web[REQUESTS].tolist() == [10.0 * m for m in range(10)]
    assert (web[CPU] == 1.0).all()


def test_a_bad_query_is_a_clear_error(prometheus: str) -> None:
    source = PrometheusSource(prometheus, {REQUESTS: "sum by (service) (app_requests_per_second"})
    with pytest.raises(ValueError, match="metric 'requests' failed \\(400\\)"):
        source.fetch(START, START + pd.Timedelta(minutes=5))


def test_a_series_without_the_service_label_is_refused(prometheus: str) -> None:
    source = PrometheusSource(prometheus, {REQUESTS: "sum(app_requests_per_second)"})
    with pytest.raises(ValueError, match="no 'service' label"):
        source.fetch(START, START + pd.Timedelta(minutes=5))
