"""Read recsql's settings from the environment: the one place that knows their names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATABASE_URL_ENV = "RECSQL_DATABASE_URL"
HOME_ENV = "RECSQL_HOME"
TEST_DATABASE_URL_ENV = "RECSQL_TEST_DATABASE_URL"


@dataclass(frozen=True)
class Config:
    """Where the database is: an explicit URL, or the embedded server under ``home``."""

    database_url: str | None
    home: Path

    @property
    def embedded(self) -> bool:
        return self.database_url is None


def load() -> Config:
    """Build the configuration from ``RECSQL_DATABASE_URL`` and ``RECSQL_HOME``."""
    url = os.environ.get(DATABASE_URL_ENV) or None
    home = Path(os.environ.get(HOME_ENV) or Path.cwd() / ".recsql").expanduser().resolve()
    return Config(database_url=url, home=home)
