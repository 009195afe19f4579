"""The one typed settings object of the system, read from ``STAPIPE_*`` environment variables.

With nothing set, everything lives under ``./var`` (the embedded default): SQLite for the database
and kombu's filesystem transport as a broker that needs no server. ``compose.yaml`` sets the
PostgreSQL and Redis URLs instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# kombu logs "No hostname was supplied. Reverting to default 'localhost'" on every connection to a
# bare ``filesystem://``; the transport ignores the host, so naming one costs nothing
EMBEDDED_BROKER = "filesystem://localhost//"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STAPIPE_", extra="ignore")

    home: Path = Field(Path("var"), description="base folder for the embedded default's files")
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = SQLite in home")
    broker_url: str | None = Field(None, description="Celery broker URL; unset = filesystem broker in home (`filesystem://localhost//`)")
    data_root: Path | None = Field(None, description="datasets must resolve inside it; unset = home/data")
    artefact_root: Path | None = Field(None, description="stage outputs; unset = home/artefacts")
    log_root: Path | None = Field(None, description="per-stage log files; unset = home/logs")
    dashboard_password: str | None = Field(None, description="login password/API token; unset = generated")
    secret_key: str | None = Field(None, description="Flask session key; unset = generated per home")
    max_attempts: int = Field(3, ge=1, description="attempts per stage before it is marked failed")
    task_time_limit_s: int = Field(48 * 3600, ge=60, description="hard limit for one stage task")
    weights_dir: Path | None = Field(None, description="folder searched for pretrained weight files")
    stavis_root: Path | None = Field(None, description="STAViS test sets (video_frames/, annotations/, …) for "
                                     "the dashboard's benchmark action; unset = data_root/stavis")
    api_url: str = Field("http://127.0.0.1:8000", description="dashboard URL used by the API client commands")
    dashboard_host: str = Field("127.0.0.1", description="address `stapipe up` serves the dashboard on")
    dashboard_port: int = Field(8000, ge=1, le=65535, description="port `stapipe up` serves the dashboard on")
    secure_cookies: bool = Field(False, description="mark session cookies Secure (set behind HTTPS)")
    trusted_proxies: str = Field(
        "", max_length=2000,
        description="comma-separated proxy addresses/CIDRs whose X-Forwarded-For names the client (login throttle)",
    )
    db_outage_s: float = Field(
        90.0, ge=1.0, le=86400.0,
        description="how long a stage retries transient database errors before handing itself back to the queue",
    )
    recovery_interval_s: float = Field(
        30.0, ge=1.0, le=3600.0,
        description="how often each worker re-queues stages of dead workers and re-sends lost messages",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        import ipaddress

        for part in filter(None, (p.strip() for p in v.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return v

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home() / 'stapipe.db'}"

    @property
    def broker(self) -> str:
        url = self.broker_url or EMBEDDED_BROKER
        return EMBEDDED_BROKER if url.rstrip("/") == "filesystem:" else url

    @property
    def broker_is_embedded(self) -> bool:
        return self.broker.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.resolved_home() / "broker"

    @property
    def data_dir(self) -> Path:
        return (self.data_root or self.resolved_home() / "data").expanduser().resolve()

    @property
    def stavis_dir(self) -> Path:
        return (self.stavis_root or self.data_dir / "stavis").expanduser().resolve()

    @property
    def artefact_dir(self) -> Path:
        return (self.artefact_root or self.resolved_home() / "artefacts").expanduser().resolve()

    @property
    def log_dir(self) -> Path:
        return (self.log_root or self.resolved_home() / "logs").expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()


def env_names() -> list[str]:
    """Every environment variable the settings read (used to check compose.yaml)."""
    return sorted(f"STAPIPE_{name.upper()}" for name in Settings.model_fields)


__all__ = ["Settings", "get_settings", "env_names"]
