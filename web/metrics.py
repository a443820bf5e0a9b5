"""Prometheus metrics: requests, latencies, errors and events per outcome, plus the folder's lag
read from the database at scrape time. Under gunicorn (PROMETHEUS_MULTIPROC_DIR set by
`recsql serve --workers`) every worker's numbers are summed."""

from __future__ import annotations

import os
import time

import psycopg
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from recsql import api
from recsql.embeddings import store
from recsql.errors import RecsqlError
from web import pool

bp = Blueprint("metrics", __name__)

REQUESTS = Counter("recsql_http_requests_total", "HTTP requests", ["method", "endpoint", "status"])
LATENCY = Histogram(
    "recsql_http_request_duration_seconds",
    "Time to answer a request",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ERRORS = Counter("recsql_http_errors_total", "Error responses by stable error code", ["status", "code"])
EVENTS = Counter("recsql_events_ingested_total", "Events received over HTTP by outcome", ["outcome"])


def events(outcome: str, n: int) -> None:
    if n:
        EVENTS.labels(outcome).inc(n)


def error(status: int, code: str) -> None:
    ERRORS.labels(str(status), code).inc()


def _endpoint() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "unmatched"


def _registry() -> CollectorRegistry:
    from prometheus_client import REGISTRY

    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def _database_lines() -> str:
    try:
        status = api.fold_status(pool.conn())
    except RecsqlError:
        return "# HELP recsql_database_up Whether the database answered\n# TYPE recsql_database_up gauge\nrecsql_database_up 0\n"
    lines = [
        "# HELP recsql_database_up Whether the database answered",
        "# TYPE recsql_database_up gauge",
        "recsql_database_up 1",
    ]
    gauges = {
        "recsql_events_pending": (
            "Events committed but not yet folded into derived state",
            status.get("pending_events"),
        ),
        "recsql_pair_events_pending": (
            "Events folded whose pair counts are queued for the list lane",
            status.get("pending_pair_events"),
        ),
        "recsql_lists_pending": ("Neighbour lists waiting to be refreshed", status.get("pending_lists")),
        "recsql_events_folded": ("Events folded since the schema was created", status.get("folded_events")),
        "recsql_fold_lag_seconds": ("Seconds since the folder last ran", status.get("seconds_since_fold")),
    }
    for name, (help_text, value) in gauges.items():
        if value is not None:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {float(value)}"]
    try:
        lag = store.queue_lag(pool.conn())
    except psycopg.Error:
        lag = []  # a database before migration 0003
    for name, key, help_text in (
        ("recsql_embedding_queue", "queued", "Items waiting for a vector, per space"),
        ("recsql_embedding_lag_seconds", "oldest_s", "Age of the oldest queued item, per space"),
    ):
        if lag:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            lines += [f'{name}{{space="{r["space"]}"}} {float(r[key])}' for r in lag]
    return "\n".join(lines) + "\n"


@bp.get("/metrics")
def scrape() -> Response:
    text = generate_latest(_registry()).decode() + _database_lines()
    return Response(text, mimetype=CONTENT_TYPE_LATEST.split(";")[0])


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        endpoint = _endpoint()
        REQUESTS.labels(request.method, endpoint, str(resp.status_code)).inc()
        started = g.get("started")
        if started is not None:
            LATENCY.labels(endpoint).observe(time.perf_counter() - started)
        return resp
