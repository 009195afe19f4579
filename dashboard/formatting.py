"""Jinja filters for times, durations and sizes (all times are UTC; SQLite returns them naive)."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def duration_s(start: datetime | None, end: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from start to end (or to now while still running)."""
    start = as_utc(start)
    if start is None:
        return None
    end = as_utc(end) or now or datetime.now(UTC)
    return max(0.0, (end - start).total_seconds())


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def human_size(n: int | None) -> str:
    if n is None:
        return "–"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def short_time(value: datetime | None) -> str:
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(
        duration=human_duration, size=human_size, time=short_time, iso=iso
    )
    app.jinja_env.globals["duration_s"] = duration_s
    from .views import stage_progress

    app.jinja_env.globals["progress_of"] = stage_progress
