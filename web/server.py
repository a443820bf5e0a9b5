"""Running the app: Werkzeug's development server, or gunicorn with N worker processes."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from recsql import db, migrate
from recsql.errors import SchemaMissing


def prepare(anonymous_tracking: bool, workers: int, extra_env: dict[str, str] | None = None) -> str:
    """Resolve the database once (starting the embedded server if needed), check its schema and
    export the settings every worker process reads. Returns the database URL."""
    url = db.database_url()
    revision, head = migrate.current(url), migrate.head()
    if revision != head:
        raise SchemaMissing(
            f"the database is at revision {revision or 'none'}, the code expects {head}. Run `recsql db upgrade`."
        )
    os.environ["RECSQL_DATABASE_URL"] = url  # workers must not each start an embedded server
    if anonymous_tracking:
        os.environ["RECSQL_ALLOW_ANONYMOUS_TRACKING"] = "1"
    # Rate-limit buckets live per process: each of N workers admits 1/N of the configured rate.
    os.environ["RECSQL_RATE_LIMIT_DIVISOR"] = str(max(1, workers))
    os.environ.update(extra_env or {})
    return url


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        from web import create_app

        return create_app()


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def run_gunicorn(host: str, port: int, workers: int, threads: int, timeout: int = 30) -> None:
    """Serve with gunicorn (blocks until stopped).

    Workers merge their metrics through the directory in PROMETHEUS_MULTIPROC_DIR, which must be
    set before prometheus_client is first imported (`recsql serve` does that).
    """
    os.environ.setdefault("RECSQL_POOL_SIZE", str(threads + 1))
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread" if threads > 1 else "sync",
            "timeout": timeout,
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "child_exit": _child_exit,
            "proc_name": "recsql",
        }
    ).run()


def run_development(host: str, port: int) -> None:
    """Werkzeug's threaded server: fine for trying things out, not for production traffic."""
    from web import create_app

    create_app().run(host=host, port=port, threaded=True, use_reloader=False)


def run_demo(port: int) -> None:
    """The demo shop: open access (no keys), so it binds to loopback only, with an in-process folder."""
    from web import create_app

    app = create_app(
        {"OPEN_ACCESS": True, "DEMO": True, "RUN_WORKER": True, "DATABASE_URL": db.database_url()}
    )
    app.run(host="127.0.0.1", port=port, threaded=True, use_reloader=False)
