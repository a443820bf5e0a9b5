"""`recsql models ...` and `recsql evaluate`: model versions and their offline evaluation."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg.types.json import Jsonb

from recsql import api, db
from recsql.cli import _format_option, _print_rows, main
from recsql.errors import BadInput, translate


def _parse_value(raw: str) -> Any:
    """`--set key=value`: JSON when it parses (numbers, objects), else the text itself."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--set wants key=value, got {pair!r}", code="invalid_parameter")
        value = _parse_value(raw)
        if key.startswith("weights."):
            params.setdefault("weights", {})[key.removeprefix("weights.")] = value
        else:
            params[key] = value
    return params


@main.group("models")
def models_group() -> None:
    """Model versions: named, immutable parameter sets (one active)."""


@models_group.command("create")
@click.argument("name")
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE", help="A parameter; weights.TYPE=N for a weight."
)
@click.option("--description", default="", help="What this version changes and why.")
def models_create(name: str, sets: tuple[str, ...], description: str) -> None:
    """Create a candidate from the active model's parameters with the given changes."""
    changes = _parse_sets(sets)
    with db.connection() as conn:
        db.require_schema(conn)
        try:
            with conn.transaction():
                base = conn.execute("SELECT params FROM recsql.models WHERE status = 'active'").fetchone()
                full = conn.execute(
                    "SELECT recsql.check_params(%s, %s) AS p",
                    (Jsonb(changes), Jsonb(base["params"] if base else None)),
                ).fetchone()
                assert full is not None
                conn.execute(
                    "INSERT INTO recsql.models (name, params, description) VALUES (%s, %s, %s)",
                    (name, Jsonb(full["p"]), description),
                )
        except psycopg.errors.UniqueViolation as exc:
            raise BadInput(f"a model named {name!r} exists; versions are immutable, pick a new name") from exc
        except psycopg.Error as exc:
            raise translate(exc) from exc
    click.echo(
        f"created candidate {name}: " + (", ".join(f"{k}={v}" for k, v in changes.items()) or "no changes")
    )


@models_group.command("list")
@_format_option
def models_list(fmt: str) -> None:
    """Every version with its status and what differs from the active one."""
    with db.connection() as conn:
        db.require_schema(conn)
        rows = conn.execute(
            "WITH a AS (SELECT params FROM recsql.models WHERE status = 'active')"
            " SELECT m.name, m.status, m.created_at, m.promoted_at,"
            " coalesce((SELECT string_agg(p.key || '=' || p.value::text, ' ' ORDER BY p.key)"
            "  FROM jsonb_each(m.params) p, a WHERE a.params -> p.key IS DISTINCT FROM p.value), '') AS differs,"
            " coalesce(st.status, '') AS state, st.built_events AS state_events, m.description"
            " FROM recsql.models m LEFT JOIN recsql.model_states st ON st.model = m.name"
            " ORDER BY m.created_at, m.name"
        ).fetchall()
    _print_rows([dict(r) for r in rows], fmt)


@main.command("evaluate")
@click.option(
    "--model", "models", multiple=True, help="Candidate to evaluate beside the active model; repeatable."
)
@click.option(
    "--split", "split_at", default=None, help="Train on events before this time (ISO 8601 with zone)."
)
@click.option("--holdout-last", type=float, default=None, help="Test on each user's last FRACTION of events.")
@click.option("--baseline", type=click.Choice(["popular", "none"]), default="popular", show_default=True)
@click.option("--max-users", type=int, default=None, help="Evaluate a deterministic sample of test users.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress lines on stderr (default: with --format table only).",
)
def evaluate(
    models: tuple[str, ...],
    split_at: str | None,
    holdout_last: float | None,
    baseline: str,
    max_users: int | None,
    fmt: str,
    plot_path: Path | None,
    progress: bool | None,
) -> None:
    """Replay the events before a split and score every model's top-k on what users did after it."""
    from recsql.evaluation import run

    at = None
    if split_at is not None:
        try:
            at = datetime.fromisoformat(split_at)
        except ValueError as exc:
            raise BadInput(
                f"--split wants an ISO 8601 time like 2026-11-01T00:00:00Z, got {split_at!r}"
            ) from exc
    url = db.database_url()
    with db.connection(url) as conn:
        db.require_schema(conn)
        result = run.evaluate(
            conn,
            url,
            models=models,
            split_at=at,
            holdout_last=holdout_last,
            baseline=baseline == "popular",
            max_users=max_users,
            show_progress=fmt == "table" if progress is None else progress,
        )
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "run_id": result.run_id,
                    "split": result.split,
                    "data_fingerprint": result.fingerprint,
                    "users": result.users,
                    "seconds": result.seconds,
                    "scores": result.scores.to_dict(orient="records"),
                },
                indent=2,
            )
        )
    else:
        table = result.table()
        click.echo(
            f"\nrun {result.run_id}  split {result.split}  {result.users:,} users  data {result.fingerprint}"
        )
        click.echo(table.to_string(float_format=lambda v: f"{v:.4f}"))
        click.echo("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
        click.echo("stored in recsql.evaluations")
    if plot_path is not None:
        run.plot(result, plot_path)
        click.echo(f"chart written to {plot_path}", err=True)


@models_group.command("promote")
@click.argument("name")
@click.option("--force", is_flag=True, help="Promote even if the offline gate refuses.")
@click.option(
    "--tolerance",
    type=float,
    default=0.01,
    show_default=True,
    help="Refuse when the candidate's NDCG@10 is below the active model's by more than this share.",
)
def models_promote(name: str, force: bool, tolerance: float) -> None:
    """Make NAME the active model, in one transaction, if its offline evaluation allows it."""
    with db.connection() as conn:
        db.require_schema(conn)
        gate = conn.execute("SELECT * FROM recsql.promotion_gate(%s)", (name,)).fetchone()
        if gate is None:
            message = (
                f"no evaluation compares {name} with the active model; run"
                f" `recsql evaluate --model {name} --holdout-last 0.2` first"
            )
            if not force:
                raise BadInput(message + " (or promote with --force)", code="not_evaluated")
            click.echo(f"warning: {message}; promoting anyway (--force)", err=True)
        else:
            active_value, candidate_value = float(gate["active_value"]), float(gate["candidate_value"])  # type: ignore[arg-type]
            floor = active_value * (1 - tolerance)
            verdict = (
                f"NDCG@10 {gate['candidate_value']:.4f} for {name} against {gate['active_value']:.4f} for"
                f" {gate['active']} (evaluation {gate['run_id']} of {gate['evaluated_at']:%Y-%m-%d %H:%M};"
                f" floor {floor:.4f} at tolerance {tolerance:.0%})"
            )
            if candidate_value < floor:
                if not force:
                    raise BadInput(f"refused: {verdict}. Use --force to promote anyway.", code="gate_refused")
                click.echo(f"warning: the gate refuses ({verdict}); promoting anyway (--force)", err=True)
            else:
                click.echo(f"gate passed: {verdict}", err=True)
        how = _promote(conn, name)
    click.echo(f"{name} is active ({how})")


@models_group.command("rollback")
def models_rollback() -> None:
    """Make the previously active model active again (no gate: it was live before)."""
    with db.connection() as conn:
        db.require_schema(conn)
        row = conn.execute("SELECT recsql.previous_model() AS name").fetchone()
        if row is None or row["name"] is None:
            raise BadInput("no previously active model to roll back to", code="nothing_to_roll_back")
        previous = str(row["name"])
        how = _promote(conn, previous)
    click.echo(f"rolled back: {previous} is active ({how})")


@models_group.command("build")
@click.argument("name")
def models_build(name: str) -> None:
    """Build NAME's own derived state from the event log, beside the active one (a shadow state).

    The active model keeps serving and folding while it builds; live events then flow into both.
    A candidate with a state can take A/B traffic, and promoting it swaps the states instantly.
    """
    with db.connection() as conn:
        db.require_schema(conn)
        _build(conn, name)


@models_group.command("drop-state")
@click.argument("name")
def models_drop_state(name: str) -> None:
    """Drop NAME's shadow state (ends its A/B test; a rollback to it would rebuild it)."""
    with db.connection() as conn:
        db.require_schema(conn)
        dropped = api.drop_model_state(conn, name)
    click.echo(f"dropped the state of {name}" if dropped else f"{name} has no state of its own")


def _build(conn: psycopg.Connection[Any], name: str) -> None:
    events = conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()
    click.echo(
        f"building the state of {name} from {events['n'] if events else 0:,} events"
        " (the active model keeps serving)...",
        err=True,
    )
    state = api.build_model_state(conn, name)
    click.echo(
        f"state of {name} built in {float(state['build_seconds']):.1f}s"
        f" ({state['built_events']:,} events, schema {state['schema_name']}); live events now feed it",
        err=True,
    )


def _promote(conn: psycopg.Connection[Any], name: str) -> str:
    # A model whose parameters shape derived state gets its state built beside the active one
    # first, so the promotion itself is a swap that readers never wait on for long.
    if api.model_state(conn, name) is None and api.needs_state(conn, name):
        _build(conn, name)
    try:
        row = conn.execute("SELECT recsql.promote_model(%s) AS how", (name,)).fetchone()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return str(row["how"]) if row else "done"


@models_group.command("traffic")
@click.argument("name")
@click.argument("share", type=float)
def models_traffic(name: str, share: float) -> None:
    """Serve candidate NAME to SHARE of users (0 ends its test); the active model serves the rest."""
    with db.connection() as conn:
        db.require_schema(conn)
        try:
            conn.execute("SELECT recsql.set_traffic(%s, %s)", (name, share))
        except psycopg.Error as exc:
            raise translate(exc) from exc
        shares = [
            (str(r["model"]), float(r["share"]))  # type: ignore[arg-type]
            for r in conn.execute("SELECT model, share FROM recsql.model_traffic ORDER BY model").fetchall()
        ]
    rest = 1.0 - sum(share for _, share in shares)
    split = ", ".join(f"{model} {share:.0%}" for model, share in shares)
    click.echo(f"traffic: {split + ', ' if split else ''}active model {rest:.0%}")


@models_group.command("report")
@click.option("--days", type=int, default=14, show_default=True, help="Window of served lists.")
@_format_option
def models_report(days: int, fmt: str) -> None:
    """CTR, conversion and revenue per model, with a two-proportion z-test against the active model."""
    from recsql.evaluation import online

    with db.connection() as conn:
        db.require_schema(conn)
        rows = online.report(conn, days=days)
    _print_rows(rows, fmt)
