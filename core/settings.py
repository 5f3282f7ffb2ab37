"""Runtime settings for every Forescale component.

All state lives under one directory, ``FORESCALE_HOME`` (default ``./.forescale``). Every other
location is derived from it unless set explicitly, so two runs with different homes never share
state. Settings are read from the environment (prefix ``FORESCALE_``) when :func:`get_settings`
is called, never at import time.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_WRITE_TOKEN = "forescale-dev-token"
DEV_READ_TOKEN = "forescale-dev-read-token"
KNOWN_DEFAULT_TOKENS = frozenset(
    {DEV_WRITE_TOKEN, DEV_READ_TOKEN, "change-me", "changeme", "replace-me"}
)
MIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Forescale configuration, validated on construction.

    Attributes:
        home: State directory; everything Forescale writes goes below it.
        mlflow_tracking_uri: MLflow tracking URI; defaults to SQLite under ``home``.
        schedule_db_url: SQLAlchemy URL of the schedule store; defaults to SQLite under ``home``.
        api_url: Base URL of the serving API (used by clients and the run command).
        api_token: Bearer token of the write scope (publish schedules, live floors); it reads
            too.
        api_read_token: Bearer token of the read scope (every ``GET`` and ``/metrics``): the one
            KEDA's TriggerAuthentication sends.
        dev: Development mode: the API accepts the built-in default tokens (``make run`` and
            ``forescale up`` set it; ``forescale serve --dev``).
        params_file: The YAML file with per-service and pipeline parameters.
        online_store: Feast online store type, ``sqlite`` (embedded) or ``redis``.
        redis_connection: Feast Redis connection string when ``online_store`` is ``redis``.
        prometheus_url: Base URL of Prometheus for the ``prometheus`` telemetry source.
        step_minutes: Resolution of the feature store and the forecasts, in minutes.
    """

    model_config = SettingsConfigDict(env_prefix="FORESCALE_", extra="ignore")

    home: Path = Field(default=Path(".forescale"))
    mlflow_tracking_uri: str | None = None
    schedule_db_url: str | None = None
    api_url: str = "http://127.0.0.1:8000"
    api_token: SecretStr = SecretStr(DEV_WRITE_TOKEN)
    api_read_token: SecretStr = SecretStr(DEV_READ_TOKEN)
    dev: bool = False
    params_file: Path = REPO_ROOT / "params.yaml"
    online_store: str = "sqlite"
    redis_connection: str = "127.0.0.1:6379,db=0"
    prometheus_url: str | None = None
    step_minutes: int = 5

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("online_store")
    @classmethod
    def _known_online_store(cls, value: str) -> str:
        if value not in {"sqlite", "redis"}:
            raise ValueError(f"online_store must be 'sqlite' or 'redis', got {value!r}")
        return value

    @field_validator("step_minutes")
    @classmethod
    def _step_divides_hour(cls, value: int) -> int:
        if value <= 0 or 60 % value:
            raise ValueError(f"step_minutes must divide 60, got {value}")
        return value

    @property
    def telemetry_dir(self) -> Path:
        """Validated raw telemetry, Parquet partitioned by service and day."""
        return self.home / "telemetry"

    @property
    def staging_dir(self) -> Path:
        """Extracted batches waiting for validation."""
        return self.home / "staging"

    @property
    def quarantine_dir(self) -> Path:
        """Batches that failed validation, kept with their report."""
        return self.home / "quarantine"

    @property
    def offline_dir(self) -> Path:
        """The feature store's offline source (5-minute aggregates)."""
        return self.home / "offline"

    @property
    def feature_repo_dir(self) -> Path:
        """Rendered Feast repository (registry, online store) for this home."""
        return self.home / "feature_repo"

    @property
    def artifacts_dir(self) -> Path:
        """Models, forecasts, schedules and reports written by pipeline runs."""
        return self.home / "artifacts"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Artifact root of the embedded MLflow store."""
        return self.home / "mlartifacts"

    @property
    def airflow_home(self) -> Path:
        """``AIRFLOW_HOME`` for the embedded Airflow."""
        return self.home / "airflow"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI actually used."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def schedule_db(self) -> str:
        """The schedule store's SQLAlchemy URL actually used."""
        return self.schedule_db_url or f"sqlite:///{self.home / 'serving.db'}"

    def api_token_problems(self) -> list[str]:
        """Why the API must not start with these tokens (empty when it may).

        Outside ``dev`` mode a token must not be a known default (the built-in development
        tokens, ``.env.example``'s placeholders) and must have at least
        :data:`MIN_TOKEN_LENGTH` characters. The two scopes never share a token.

        Returns:
            One sentence per problem, naming the environment variable.
        """
        write = self.api_token.get_secret_value()
        read = self.api_read_token.get_secret_value()
        problems = []
        if write == read:
            problems.append(
                "FORESCALE_API_READ_TOKEN equals FORESCALE_API_TOKEN: the read scope needs its "
                "own token"
            )
        if self.dev:
            return problems
        for variable, token in (("FORESCALE_API_TOKEN", write), ("FORESCALE_API_READ_TOKEN", read)):
            if token.strip().lower() in KNOWN_DEFAULT_TOKENS:
                problems.append(
                    f"{variable} is a known default token; set a secret one (e.g. `openssl rand "
                    f"-hex 32`), or FORESCALE_DEV=1 for a local development server"
                )
            elif len(token) < MIN_TOKEN_LENGTH:
                problems.append(f"{variable} is shorter than {MIN_TOKEN_LENGTH} characters")
        return problems

    def ensure_dirs(self) -> None:
        """Create the state directories (called by commands that write, never at import)."""
        for path in (
            self.home,
            self.telemetry_dir,
            self.staging_dir,
            self.quarantine_dir,
            self.offline_dir,
            self.artifacts_dir,
            self.mlflow_artifacts_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides taking precedence.

    Args:
        **overrides: Field values that replace what the environment says.

    Returns:
        A validated :class:`Settings`.
    """
    return Settings(**overrides)  # type: ignore[arg-type]
