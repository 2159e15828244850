"""Process-level settings: where the config file and data live, how to listen.

The product configuration (models, keys, policies) lives in the YAML file loaded by `policies`;
these settings only say where that file is and how this process runs.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from policies.schema import check_secret_text


class Settings(BaseSettings):
    """Typed process settings, read from `DRAFTGATE_*` environment variables."""

    # An empty variable is an unset one (compose's `${VAR:-}`), as DATABASE_URL and DRAFTGATE_MASTER_KEY always were:
    # DRAFTGATE_CONFIG= was the current directory ("cannot read the file: Is a directory"), DRAFTGATE_HOST= no address.
    model_config = SettingsConfigDict(env_prefix="DRAFTGATE_", env_nested_delimiter="__", extra="ignore",
                                      env_ignore_empty=True)

    config: Path | None = Field(default=None, description="draftgate.yaml; None = embedded defaults")
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DRAFTGATE_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy URL; overrides the YAML; default SQLite file in data_dir",
    )
    data_dir: Path = Field(default=Path("draftgate-data"), description="SQLite ledger and journals")
    master_key: SecretStr | None = Field(default=None, description="overrides the YAML master_key")
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, description="worker processes of `draftgate serve`")
    ledger_flush_interval_s: float = Field(default=0.2, ge=0.01, le=60.0,
                                           description="how often journalled ledger rows are written to the database")
    worker_id: str | None = Field(default=None, description="names this process's ledger journal (default: the host name)")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    shutdown_timeout_s: int = Field(
        default=25, ge=0, le=3600,
        description="on SIGTERM, how long requests in flight may still finish; then they are cancelled and recorded "
                    "(keep it under the orchestrator's grace period: Kubernetes kills after 30 s)")
    load_local_engine: bool = Field(default=True, description="False skips loading the local model")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("master_key")
    @classmethod
    def _no_outer_space(cls, value: SecretStr | None) -> SecretStr | None:
        # As the YAML's master_key: a secret file's trailing newline would make every request a 401.
        check_secret_text(value.get_secret_value() if value is not None else None)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def resolved_database_url(self, config_url: str | None) -> str:
        """Environment beats YAML beats the default SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        if config_url:
            return config_url
        return f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"

    def journal_path(self) -> Path:
        """Each process journals to its own file so workers never interleave lines: `worker_id`, by default the
        host name, tells replicas apart (in containers every one is pid 1, and `--scale` replicas share one
        environment and one journal volume, but each has its own host name); the pid tells apart the workers of
        one `serve --workers N`. Recovery replays every orphaned journal, whatever its name."""
        return self.data_dir / f"ledger-{self.worker_name()}-{os.getpid()}.journal"

    def worker_name(self) -> str:
        """`worker_id`, else the host name, made safe for a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.worker_id or socket.gethostname())
