"""recsql: real-time recommendations maintained inside PostgreSQL."""

from recsql.errors import RecsqlError

__all__ = ["RecsqlError"]
__version__ = "0.1.0"
