"""Durable, versioned storage of replica schedules (SQLite by default, PostgreSQL unchanged).

Tables (created on first use, never at import):

- ``schedules``: one row per published schedule; ``version`` counts 1, 2, ... per service.
- ``explanations``: a JSON document per (service, schedule version).
- ``anomalies``: scored telemetry points per (service, ts).
- ``live_floor``: the latest reactive floor (replicas the live load needs) per service.
- ``publish_keys``: the idempotency key of a publish -> the version it created.
- ``scorecards``: one shadow scorecard (:class:`core.scorecard.ScorecardDay`) per (service, day).
- ``mode_changes``: every move of the go-live gate (service, ts, from, to, reason).
- ``cold_starts``: services training left out for lack of history, with the reason.
- ``store_revision``: one counter, raised by every write that changes what is served (a
  schedule, a live floor, a gate move, a cold start), so a reader learns with one tiny query
  whether anything changed.

Every write is one transaction: a publish either stores the schedule (and its explanation) with a
new version, or changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from core.schema import validate_service_name
from core.scorecard import ScorecardDay
from core.service_config import ACTIVE, SHADOW
from serving.schemas import Anomaly, Schedule, SchedulePublish, ScheduleStep

PUBLISH_ATTEMPTS = 5  # retries when two publishers race for the same next version
_WRITE_FLAG = "forescale_write_transaction"
LOOKUP_BATCH = 500  # services per query of a lookup by name (bound parameters per statement)
SCHEDULE_CACHE_SIZE = 256  # parsed schedules kept in memory (~150 kB each at 288 steps)
_PG_LOCK_NAMESPACE = 1179840513  # advisory-lock namespace of schedule publishes


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; timestamps must be aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

schedules_table = Table(
    "schedules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("model_version", String(256), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("generated_at", UTCDateTime, nullable=False),
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime, nullable=False),
    Column("step_seconds", Integer, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("steps", JSON, nullable=False),
    UniqueConstraint("service", "version", name="uq_schedules_service_version"),
)

explanations_table = Table(
    "explanations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("schedule_version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("service", "schedule_version", name="uq_explanations_service_version"),
)

anomalies_table = Table(
    "anomalies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("ts", UTCDateTime, nullable=False),
    Column("score", Float, nullable=False),
    Column("is_anomaly", Boolean, nullable=False),
    UniqueConstraint("service", "ts", name="uq_anomalies_service_ts"),
)

live_floor_table = Table(
    "live_floor",
    metadata,
    Column("service", String(128), primary_key=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("replicas", Integer, nullable=False),
)

publish_keys_table = Table(
    "publish_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("service", "idempotency_key", name="uq_publish_keys_service_key"),
)

scorecards_table = Table(
    "scorecards",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False),
    Column("day", Date, nullable=False),
    Column("generated_at", UTCDateTime, nullable=False),
    Column("status", String(32), nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("service", "day", name="uq_scorecards_service_day"),
)

mode_changes_table = Table(
    "mode_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service", String(128), nullable=False, index=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("from_mode", String(16), nullable=False),
    Column("to_mode", String(16), nullable=False),
    Column("reason", Text, nullable=False),
)

cold_starts_table = Table(
    "cold_starts",
    metadata,
    Column("service", String(128), primary_key=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)

revision_table = Table(
    "store_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", Integer, nullable=False),
)
_REVISION_ROW = 1


class IdempotencyConflict(ValueError):
    """An idempotency key was used before for a different schedule of the same service."""


@dataclass(frozen=True)
class PublishOutcome:
    """What a keyed publish did.

    Attributes:
        version: The version the key stands for.
        created_at: When that version was stored.
        replayed: True when the key had been used for the same body before (nothing stored).
    """

    version: int
    created_at: datetime
    replayed: bool


@dataclass(frozen=True)
class FloorReading:
    """The latest reactive floor of a service.

    Attributes:
        ts: When the live load was measured.
        replicas: Replicas that load needs.
    """

    ts: datetime
    replicas: int


@dataclass(frozen=True)
class ModeChange:
    """One move of the go-live gate.

    Attributes:
        service: The service.
        ts: When the gate moved it.
        from_mode: The mode it left.
        to_mode: The mode it entered.
        reason: Why (the days and figures behind the move).
    """

    service: str
    ts: datetime
    from_mode: str
    to_mode: str
    reason: str


@dataclass(frozen=True)
class ColdStart:
    """A service training left out for lack of history.

    Attributes:
        ts: When training found it so.
        reason: E.g. ``"not enough history (2.0 of 4 days)"``.
    """

    ts: datetime
    reason: str


MODES = (SHADOW, ACTIVE)


def _engine_for(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if in_memory else None,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, emit BEGIN (see _sqlite_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Connection) -> None:
        # Writers take the write lock up front, so two publishers queue on busy_timeout instead
        # of failing when one upgrades a read snapshot the other has just changed.
        write = connection.info.pop(_WRITE_FLAG, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _now() -> datetime:
    return datetime.now(UTC)


class ScheduleStore:
    """Versioned schedules, explanations, anomalies and live floors in one SQL database.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////abs/serving.db`` or
            ``postgresql://user@host:5432/db`` (served through psycopg 3).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = _engine_for(url)
        self._ready = False
        self._ready_lock = threading.Lock()
        self._cache: OrderedDict[tuple, Schedule] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _ensure_tables(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            database = self._engine.url.database
            if self._engine.url.get_backend_name() == "sqlite" and database not in (
                None,
                "",
                ":memory:",
            ):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            metadata.create_all(self._engine, checkfirst=True)
            self._create_revision_row()
            self._ready = True

    def _create_revision_row(self) -> None:
        """Insert the revision counter once, so writers only ever update it."""
        query = select(revision_table.c.id).where(revision_table.c.id == _REVISION_ROW)
        try:
            with self._engine.begin() as connection:
                if connection.execute(query).first() is None:
                    connection.execute(insert(revision_table).values(id=_REVISION_ROW, revision=0))
        except IntegrityError:
            pass  # another process inserted it first

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite), committed on success."""
        self._ensure_tables()
        with self._engine.connect() as connection:
            connection.info[_WRITE_FLAG] = True
            with connection.begin():
                yield connection

    def _connect(self) -> Any:
        self._ensure_tables()
        return self._engine.connect()

    def dispose(self) -> None:
        """Close pooled connections."""
        self._engine.dispose()

    def ping(self) -> None:
        """Check that the database answers (raises the driver's error if not)."""
        with self._connect() as connection:
            connection.execute(select(1)).scalar_one()

    # ---- change revision -------------------------------------------------------------------

    @staticmethod
    def _bump_revision(connection: Connection) -> None:
        """Raise the store revision inside a write transaction."""
        table = revision_table
        bumped = connection.execute(
            table.update().where(table.c.id == _REVISION_ROW).values(revision=table.c.revision + 1)
        )
        if bumped.rowcount == 0:
            connection.execute(insert(table).values(id=_REVISION_ROW, revision=1))

    def revision(self) -> int:
        """The store revision: it changes whenever a schedule or a live floor is written."""
        query = select(revision_table.c.revision).where(revision_table.c.id == _REVISION_ROW)
        with self._connect() as connection:
            value = connection.execute(query).scalar_one_or_none()
        return int(value or 0)

    # ---- schedules -------------------------------------------------------------------------

    @staticmethod
    def _insert_schedule(
        connection: Connection, service: str, schedule: SchedulePublish, created_at: datetime
    ) -> int:
        if connection.dialect.name == "postgresql":
            # Serialise publishers of one service for the rest of this transaction.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:service))"),
                {"namespace": _PG_LOCK_NAMESPACE, "service": service},
            )
        current = connection.execute(
            select(func.max(schedules_table.c.version)).where(schedules_table.c.service == service)
        ).scalar_one()
        version = (current or 0) + 1
        connection.execute(
            insert(schedules_table).values(
                service=service,
                version=version,
                model_version=schedule.model_version,
                created_at=created_at,
                generated_at=schedule.generated_at,
                valid_from=schedule.steps[0].ts,
                valid_until=schedule.valid_until,
                step_seconds=schedule.step_seconds,
                dry_run=schedule.dry_run,
                steps=[step.model_dump(mode="json") for step in schedule.steps],
            )
        )
        return version

    def publish_many(
        self,
        schedules: Mapping[str, SchedulePublish],
        explanations: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, int]:
        """Publish schedules (and optional explanations) for several services in one transaction.

        Args:
            schedules: Service name -> schedule.
            explanations: Service name -> JSON-serialisable explanation of that schedule.

        Returns:
            Service name -> the new version.

        Raises:
            ValueError: If an explanation names a service without a schedule in this batch or is
                not JSON-serialisable.
            sqlalchemy.exc.SQLAlchemyError: If the database refuses the write; nothing is stored.
        """
        explanations = dict(explanations or {})
        extra = sorted(set(explanations) - set(schedules))
        if extra:
            raise ValueError(f"explanations given for services without a schedule: {extra}")
        bodies = {service: _dump_json(service, body) for service, body in explanations.items()}
        for attempt in range(PUBLISH_ATTEMPTS):
            created_at = _now()
            try:
                with self._begin() as connection:
                    versions: dict[str, int] = {}
                    for service, schedule in schedules.items():
                        versions[service] = self._insert_schedule(
                            connection, service, schedule, created_at
                        )
                        if service in bodies:
                            connection.execute(
                                insert(explanations_table).values(
                                    service=service,
                                    schedule_version=versions[service],
                                    created_at=created_at,
                                    body=bodies[service],
                                )
                            )
                    self._bump_revision(connection)  # last: the row lock is held briefly
                    return versions
            except IntegrityError as error:
                if not _is_version_race(error) or attempt == PUBLISH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def publish(
        self,
        service: str,
        schedule: SchedulePublish,
        explanation: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a schedule as the service's next version, atomically.

        Args:
            service: Service name.
            schedule: The validated schedule.
            explanation: Optional JSON-serialisable explanation stored in the same transaction.

        Returns:
            The new version (1 for the service's first schedule).

        Raises:
            ValueError: If the explanation is not JSON-serialisable.
            sqlalchemy.exc.SQLAlchemyError: If the database refuses the write; nothing is stored.
        """
        explanations = {service: explanation} if explanation is not None else None
        return self.publish_many({service: schedule}, explanations)[service]

    def publish_once(
        self, service: str, schedule: SchedulePublish, idempotency_key: str
    ) -> PublishOutcome:
        """Publish a schedule at most once per idempotency key of the service.

        A client that retries a publish whose answer it never got sends the same key: the
        retry returns the version the first attempt stored instead of storing a duplicate.

        Args:
            service: Service name.
            schedule: The validated schedule.
            idempotency_key: The client's key for this publish.

        Returns:
            The version stored under the key and whether this call only replayed it.

        Raises:
            IdempotencyConflict: If the key was used for a different schedule of the service.
            sqlalchemy.exc.SQLAlchemyError: If the database refuses the write; nothing is stored.
        """
        digest = hashlib.sha256(schedule.model_dump_json().encode()).hexdigest()
        keys = publish_keys_table
        for attempt in range(PUBLISH_ATTEMPTS):
            created_at = _now()
            try:
                with self._begin() as connection:
                    if connection.dialect.name == "postgresql":
                        connection.execute(
                            text("SELECT pg_advisory_xact_lock(:namespace, hashtext(:service))"),
                            {"namespace": _PG_LOCK_NAMESPACE, "service": service},
                        )
                    earlier = connection.execute(
                        select(keys.c.body_sha256, keys.c.version, keys.c.created_at).where(
                            keys.c.service == service, keys.c.idempotency_key == idempotency_key
                        )
                    ).first()
                    if earlier is not None:
                        if earlier.body_sha256 != digest:
                            raise IdempotencyConflict(
                                f"idempotency key {idempotency_key!r} was used for a different "
                                f"schedule of {service!r} (version {earlier.version})"
                            )
                        return PublishOutcome(earlier.version, earlier.created_at, True)
                    version = self._insert_schedule(connection, service, schedule, created_at)
                    connection.execute(
                        insert(keys).values(
                            service=service,
                            idempotency_key=idempotency_key,
                            body_sha256=digest,
                            version=version,
                            created_at=created_at,
                        )
                    )
                    self._bump_revision(connection)
                    return PublishOutcome(version, created_at, False)
            except IntegrityError as error:
                if not _is_version_race(error) or attempt == PUBLISH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _row_to_schedule(row: Any) -> Schedule:
        # Rows were validated when published: rebuild them without re-validating every step.
        steps = [
            ScheduleStep.model_construct(
                ts=datetime.fromisoformat(step["ts"]).astimezone(UTC),
                replicas=step["replicas"],
                forecast_p50=step.get("forecast_p50"),
                forecast_p90=step.get("forecast_p90"),
            )
            for step in row.steps
        ]
        return Schedule.of_stored(row, steps)

    def get(self, service: str, version: int | None = None) -> Schedule | None:
        """One stored schedule.

        Args:
            service: Service name.
            version: Version to read; the latest when None.

        Returns:
            The schedule, or None if the service (or that version) has none.
        """
        table = schedules_table
        header = select(table.c.id, table.c.version, table.c.created_at).where(
            table.c.service == service
        )
        if version is None:
            header = header.order_by(table.c.version.desc()).limit(1)
        else:
            header = header.where(table.c.version == version)
        with self._connect() as connection:
            found = connection.execute(header).first()
            if found is None:
                return None
            key = (service, found.version, found.id, found.created_at)
            cached = self._cache_get(key)
            if cached is not None:
                return cached
            row = connection.execute(select(table).where(table.c.id == found.id)).one()
        schedule = self._row_to_schedule(row)
        self._cache_put(key, schedule)
        return schedule

    # Published versions never change, so parsed schedules are cached by (service, version,
    # row id, created_at): a poll costs one small query instead of parsing every step again.

    def _cache_get(self, key: tuple) -> Schedule | None:
        with self._cache_lock:
            schedule = self._cache.get(key)
            if schedule is not None:
                self._cache.move_to_end(key)
            return schedule

    def _cache_put(self, key: tuple, schedule: Schedule) -> None:
        with self._cache_lock:
            self._cache[key] = schedule
            while len(self._cache) > SCHEDULE_CACHE_SIZE:
                self._cache.popitem(last=False)

    def has_schedule(self, service: str) -> bool:
        """Whether the service has at least one schedule."""
        query = select(schedules_table.c.id).where(schedules_table.c.service == service).limit(1)
        with self._connect() as connection:
            return connection.execute(query).first() is not None

    def latest(self, service: str) -> Schedule | None:
        """The service's newest schedule, or None if it never had one."""
        return self.get(service)

    def latest_versions(self) -> dict[str, int]:
        """Every service with a schedule -> its latest version."""
        query = select(schedules_table.c.service, func.max(schedules_table.c.version)).group_by(
            schedules_table.c.service
        )
        with self._connect() as connection:
            return {service: int(version) for service, version in connection.execute(query)}

    def services(self) -> list[str]:
        """Names of the services that have at least one schedule, sorted."""
        return sorted(self.latest_versions())

    def schedules_in_force(self, service: str, start: datetime, end: datetime) -> list[Schedule]:
        """The schedules of a service that were in force in ``[start, end)``, in two queries.

        A schedule is in force from its publication (``generated_at``) until the next one: these
        are every version published before ``end``, back to the newest version published at or
        before ``start`` (all of them before ``end`` when none was).

        Args:
            service: Service name.
            start: Period start (aware).
            end: Period end (aware, exclusive).

        Returns:
            The schedules, oldest first (by ``generated_at``, then version).

        Raises:
            ValueError: If ``start`` or ``end`` is naive.
        """
        for name, value in (("start", start), ("end", end)):
            if value.tzinfo is None:
                raise ValueError(f"{name} {value.isoformat()} must be timezone-aware")
        table = schedules_table
        before_end = (table.c.service == service, table.c.generated_at < end)
        anchor = select(func.max(table.c.version)).where(*before_end, table.c.generated_at <= start)
        with self._connect() as connection:
            first = connection.execute(anchor).scalar_one_or_none()
            rows = connection.execute(
                select(table)
                .where(*before_end, table.c.version >= (first or 0))
                .order_by(table.c.version)
            ).all()
        schedules = [self._row_to_schedule(row) for row in rows]
        return sorted(schedules, key=lambda s: (s.generated_at, s.version))

    # ---- explanations ----------------------------------------------------------------------

    def put_explanation(self, service: str, version: int, explanation: Mapping[str, Any]) -> None:
        """Store (or replace) the explanation of one schedule version.

        Args:
            service: Service name.
            version: An existing schedule version of that service.
            explanation: JSON-serialisable document (e.g. SHAP attributions).

        Raises:
            ValueError: If the schedule version does not exist or the document is not JSON.
        """
        body = _dump_json(service, explanation)
        with self._begin() as connection:
            exists = connection.execute(
                select(schedules_table.c.id).where(
                    schedules_table.c.service == service, schedules_table.c.version == version
                )
            ).first()
            if exists is None:
                raise ValueError(f"service {service!r} has no schedule version {version}")
            connection.execute(
                delete(explanations_table).where(
                    explanations_table.c.service == service,
                    explanations_table.c.schedule_version == version,
                )
            )
            connection.execute(
                insert(explanations_table).values(
                    service=service, schedule_version=version, created_at=_now(), body=body
                )
            )

    def get_explanation(
        self, service: str, version: int | None = None
    ) -> tuple[int, dict[str, Any]] | None:
        """The explanation of a schedule version (the newest explained one when None).

        Args:
            service: Service name.
            version: Schedule version, or None for the newest that has an explanation.

        Returns:
            ``(schedule_version, explanation)`` or None.
        """
        query = select(explanations_table).where(explanations_table.c.service == service)
        if version is None:
            query = query.order_by(explanations_table.c.schedule_version.desc()).limit(1)
        else:
            query = query.where(explanations_table.c.schedule_version == version)
        with self._connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else (row.schedule_version, json.loads(row.body))

    # ---- anomalies -------------------------------------------------------------------------

    def record_anomalies(self, service: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Store scored points, replacing earlier scores of the same (service, ts).

        Args:
            service: Service name.
            records: Mappings with ``ts`` (aware datetime), ``score`` (float) and ``is_anomaly``.

        Returns:
            Number of points stored.

        Raises:
            ValueError: If a record lacks a field or has a naive timestamp (names the row).
        """
        return self.record_anomalies_of({service: records})

    def record_anomalies_of(self, records: Mapping[str, Iterable[Mapping[str, Any]]]) -> int:
        """Store the scored points of several services in one transaction (all or none),
        replacing earlier scores of the same (service, ts).

        Args:
            records: Service -> mappings with ``ts`` (aware datetime), ``score`` (float) and
                ``is_anomaly``.

        Returns:
            Number of points stored.

        Raises:
            ValueError: If a record lacks a field or has a naive timestamp (names the service
                and the row).
        """
        rows: dict[str, list[dict[str, Any]]] = {}
        for service, points in records.items():
            own = rows.setdefault(service, [])
            for index, record in enumerate(points):
                missing = [key for key in ("ts", "score", "is_anomaly") if key not in record]
                if missing:
                    raise ValueError(f"anomaly record {index} of {service!r} lacks {missing}")
                ts = record["ts"]
                if not isinstance(ts, datetime) or ts.tzinfo is None:
                    raise ValueError(
                        f"anomaly record {index} of {service!r}: ts must be a timezone-aware "
                        f"datetime, got {ts!r}"
                    )
                own.append(
                    {
                        "service": service,
                        "ts": ts.astimezone(UTC),
                        "score": float(record["score"]),
                        "is_anomaly": bool(record["is_anomaly"]),
                    }
                )
        stored = [row for own in rows.values() for row in own]
        if not stored:
            return 0
        with self._begin() as connection:
            for service, own in rows.items():
                if own:
                    connection.execute(
                        delete(anomalies_table).where(
                            anomalies_table.c.service == service,
                            anomalies_table.c.ts.in_([row["ts"] for row in own]),
                        )
                    )
            connection.execute(insert(anomalies_table), stored)
        return len(stored)

    def last_scored(
        self, services: Sequence[str], start: datetime, end: datetime
    ) -> dict[str, datetime]:
        """Each service's latest scored point in ``[start, end)``, read at once.

        Args:
            services: Service names.
            start: Inclusive lower bound (aware).
            end: Exclusive upper bound (aware).

        Returns:
            Service -> the time of its latest scored point (services without one are left out).
        """
        latest: dict[str, datetime] = {}
        names = list(dict.fromkeys(services))
        with self._connect() as connection:
            for first in range(0, len(names), LOOKUP_BATCH):
                query = (
                    select(anomalies_table.c.service, func.max(anomalies_table.c.ts))
                    .where(
                        anomalies_table.c.service.in_(names[first : first + LOOKUP_BATCH]),
                        anomalies_table.c.ts >= start,
                        anomalies_table.c.ts < end,
                    )
                    .group_by(anomalies_table.c.service)
                )
                latest.update({row[0]: row[1] for row in connection.execute(query)})
        return latest

    def anomalies(
        self, service: str, start: datetime | None = None, end: datetime | None = None
    ) -> list[Anomaly]:
        """Scored points of a service in ``[start, end)``, oldest first.

        Args:
            service: Service name.
            start: Inclusive lower bound (aware), or None.
            end: Exclusive upper bound (aware), or None.

        Returns:
            The points.
        """
        query = select(anomalies_table).where(anomalies_table.c.service == service)
        if start is not None:
            query = query.where(anomalies_table.c.ts >= start)
        if end is not None:
            query = query.where(anomalies_table.c.ts < end)
        with self._connect() as connection:
            rows = connection.execute(query.order_by(anomalies_table.c.ts)).all()
        return [
            Anomaly(service=row.service, ts=row.ts, score=row.score, is_anomaly=row.is_anomaly)
            for row in rows
        ]

    # ---- live floor ------------------------------------------------------------------------

    def set_live_floor(self, service: str, replicas: int, ts: datetime | None = None) -> None:
        """Record the replicas the live load of a service needs (replaces the previous value).

        Args:
            service: Service name.
            replicas: Non-negative replica count.
            ts: Measurement time (aware); now when None.

        Raises:
            ValueError: If ``replicas`` is negative.
        """
        if replicas < 0:
            raise ValueError(f"live floor of {service!r}: replicas must be >= 0, got {replicas}")
        with self._begin() as connection:
            connection.execute(
                delete(live_floor_table).where(live_floor_table.c.service == service)
            )
            connection.execute(
                insert(live_floor_table).values(
                    service=service, ts=ts or _now(), replicas=int(replicas)
                )
            )
            self._bump_revision(connection)

    def live_floors(self) -> dict[str, FloorReading]:
        """The latest reactive floor of every service that has one."""
        with self._connect() as connection:
            rows = connection.execute(select(live_floor_table)).all()
        return {row.service: FloorReading(ts=row.ts, replicas=row.replicas) for row in rows}

    def get_live_floor(self, service: str) -> FloorReading | None:
        """The latest reactive floor of a service, or None if none was ever recorded."""
        query = select(live_floor_table).where(live_floor_table.c.service == service)
        with self._connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else FloorReading(ts=row.ts, replicas=row.replicas)

    # ---- scorecards ------------------------------------------------------------------------

    def save_scorecards(self, cards: Sequence[ScorecardDay]) -> int:
        """Store scorecard days, each replacing the stored one of its (service, day).

        All in one transaction: re-scoring a day replaces it, and a failure leaves every stored
        day as it was.

        Args:
            cards: The days (a later one of the same service and day wins).

        Returns:
            Number of (service, day) records stored.

        Raises:
            ValueError: If a card is not a :class:`core.scorecard.ScorecardDay` or names an
                invalid service.
        """
        rows: dict[tuple[str, date], dict[str, Any]] = {}
        for index, card in enumerate(cards):
            if not isinstance(card, ScorecardDay):
                raise ValueError(  # noqa: TRY004 (contract: ValueError)
                    f"scorecard {index} is a {type(card).__name__}, not a ScorecardDay"
                )
            validate_service_name(card.service)
            rows[(card.service, card.day)] = {
                "service": card.service,
                "day": card.day,
                "generated_at": card.generated_at,
                "status": card.status,
                "body": card.model_dump_json(),
            }
        if not rows:
            return 0
        table = scorecards_table
        with self._begin() as connection:
            for service, day in rows:
                connection.execute(
                    delete(table).where(table.c.service == service, table.c.day == day)
                )
            connection.execute(insert(table), list(rows.values()))
        return len(rows)

    def scorecards(
        self,
        service: str,
        day: date | None = None,
        *,
        since: date | None = None,
        until: date | None = None,
    ) -> list[ScorecardDay]:
        """A service's stored scorecard days, newest first.

        Args:
            service: Service name.
            day: Only this day (a list of at most one).
            since: Only days on or after this one.
            until: Only days on or before this one.

        Returns:
            The days.
        """
        table = scorecards_table
        query = select(table.c.body).where(table.c.service == service)
        if day is not None:
            query = query.where(table.c.day == day)
        if since is not None:
            query = query.where(table.c.day >= since)
        if until is not None:
            query = query.where(table.c.day <= until)
        with self._connect() as connection:
            bodies = connection.execute(query.order_by(table.c.day.desc())).scalars().all()
        return [_scorecard(service, body) for body in bodies]

    def latest_scorecard(self, service: str) -> ScorecardDay | None:
        """The newest stored scorecard day of a service, or None."""
        table = scorecards_table
        query = (
            select(table.c.body)
            .where(table.c.service == service)
            .order_by(table.c.day.desc())
            .limit(1)
        )
        with self._connect() as connection:
            body = connection.execute(query).scalar_one_or_none()
        return None if body is None else _scorecard(service, body)

    def scorecard_services(self) -> list[str]:
        """Services with at least one stored scorecard day, sorted."""
        query = select(scorecards_table.c.service).distinct()
        with self._connect() as connection:
            return sorted(connection.execute(query).scalars().all())

    # ---- go-live gate ----------------------------------------------------------------------

    def record_mode_change(
        self, service: str, ts: datetime, from_mode: str, to_mode: str, reason: str
    ) -> ModeChange:
        """Record a move of the go-live gate (served from the next store check on).

        Args:
            service: Service name.
            ts: When the move happens (aware).
            from_mode: The mode the service leaves (``shadow`` or ``active``).
            to_mode: The mode it enters.
            reason: Why.

        Returns:
            The recorded move.

        Raises:
            ValueError: If the service name or a mode is invalid, the two modes are equal, or
                ``ts`` is naive.
        """
        validate_service_name(service)
        for name, mode in (("from_mode", from_mode), ("to_mode", to_mode)):
            if mode not in MODES:
                raise ValueError(f"{name} must be one of {MODES}, got {mode!r}")
        if from_mode == to_mode:
            raise ValueError(f"mode change of {service!r} from {from_mode!r} to itself")
        if ts.tzinfo is None:
            raise ValueError(f"mode change of {service!r}: ts must be timezone-aware")
        change = ModeChange(service, ts.astimezone(UTC), from_mode, to_mode, reason)
        with self._begin() as connection:
            connection.execute(
                insert(mode_changes_table).values(
                    service=service,
                    ts=change.ts,
                    from_mode=from_mode,
                    to_mode=to_mode,
                    reason=reason,
                )
            )
            self._bump_revision(connection)
        return change

    def mode_history(self, service: str) -> list[ModeChange]:
        """Every recorded move of a service, newest first."""
        table = mode_changes_table
        query = (
            select(table)
            .where(table.c.service == service)
            .order_by(table.c.ts.desc(), table.c.id.desc())
        )
        with self._connect() as connection:
            rows = connection.execute(query).all()
        return [_mode_change(row) for row in rows]

    def current_mode(self, service: str) -> str | None:
        """The mode the gate last moved a service to, or None if it never moved it."""
        history = self.mode_history(service)
        return history[0].to_mode if history else None

    def current_modes(self) -> dict[str, ModeChange]:
        """Every service the gate ever moved -> its last move."""
        table = mode_changes_table
        with self._connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.ts, table.c.id)).all()
        return {row.service: _mode_change(row) for row in rows}

    # ---- cold starts -----------------------------------------------------------------------

    def set_cold_starts(
        self, cold: Mapping[str, str], trained: Iterable[str], ts: datetime | None = None
    ) -> None:
        """Record which services training left out for lack of history, and which it trained.

        Args:
            cold: Service -> why it was not trained (replaces its earlier record).
            trained: Services that were trained (their records are removed).
            ts: When (aware); now when None.
        """
        cold = dict(cold)
        gone = set(trained) | set(cold)
        if not gone:
            return
        table = cold_starts_table
        with self._begin() as connection:
            connection.execute(delete(table).where(table.c.service.in_(sorted(gone))))
            if cold:
                connection.execute(
                    insert(table),
                    [
                        {"service": service, "ts": ts or _now(), "reason": reason}
                        for service, reason in cold.items()
                    ],
                )
            self._bump_revision(connection)

    def cold_starts(self) -> dict[str, ColdStart]:
        """Every service currently left out of training -> when and why."""
        with self._connect() as connection:
            rows = connection.execute(select(cold_starts_table)).all()
        return {row.service: ColdStart(ts=row.ts, reason=row.reason) for row in rows}


def _scorecard(service: str, body: str) -> ScorecardDay:
    try:
        return ScorecardDay.model_validate_json(body)
    except ValidationError as error:
        raise ValueError(f"stored scorecard of {service!r} is unreadable: {error}") from error


def _mode_change(row: Any) -> ModeChange:
    return ModeChange(row.service, row.ts, row.from_mode, row.to_mode, row.reason)


def _dump_json(service: str, document: Mapping[str, Any]) -> str:
    try:
        return json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"explanation of {service!r} is not JSON-serialisable: {error}") from error


def _is_version_race(error: IntegrityError) -> bool:
    """Whether an insert failed because another publisher took the same (service, version)."""
    text = str(error.orig)
    return "uq_schedules_service_version" in text or "schedules.service, schedules.version" in text
