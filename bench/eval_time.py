"""How long `recsql evaluate` takes end to end: a candidate beside the active model and popularity.

For each dataset it builds a source database (the event log, unfolded, and the catalog), creates a
candidate model with bench/quality.py's tuned settings (cooc_window 20 among them, so the candidate
needs its derived state rebuilt, as most real candidates do), and runs

    recsql evaluate --model candidate --holdout-last 0.2 --format json --progress

as a subprocess against it, timing the whole command (reading the log, splitting, replaying and
folding the training events into a scratch database, refitting behaviour vectors, asking every
test user for top-20 from both models, scoring, storing). The command's progress lines go to
stderr; its JSON gives the phases. Datasets: MovieLens-100k (with text vectors, as in
bench/quality.py) and the synthetic shop stream of bench/ingest.py (recsql.synth: Zipf items,
sessions, the view -> cart -> purchase funnel; no text vectors).

    python bench/eval_time.py                                   # both; the 1M stream takes minutes
    python bench/eval_time.py --dataset synthetic --events 100000 --items 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchdb
import quality
from psycopg.types.json import Jsonb

from recsql import db, load, synth
from recsql.progress import Progress

CANDIDATE = "candidate"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ml100k_source(server: str, data_dir: Path) -> tuple[str, dict[str, Any]]:
    events = quality.load_interactions(data_dir)
    url, info = quality.build_source(
        server, events, quality.load_catalog(data_dir), name="recsql_eval_ml100k"
    )
    return url, {"dataset": "ml-100k", **info}


def synthetic_source(
    server: str, n_events: int, n_items: int, n_users: int, seed: int
) -> tuple[str, dict[str, Any]]:
    """The synthetic shop of bench/ingest.py, streamed into a fresh database with a progress line."""
    url = benchdb.create_fresh(server, "recsql_eval_synth")
    started = time.perf_counter()
    with db.connection(url) as conn:
        items = load.upsert_items(conn, synth.catalog(n_items, seed))
        sent = [0]
        progress = Progress(
            "generating and loading the synthetic stream",
            total=n_events,
            position=lambda: sent[0],
            unit="events",
        )

        def counted() -> Any:
            for event in synth.events(n_users, n_items, n_events=n_events, seed=seed):
                sent[0] += 1
                progress.update(sent[0])
                yield event

        n = load.copy_events(conn, counted())
        progress.done(n)
    info = {"dataset": "synthetic", "items": items, "events": n, "users": n_users, "seed": seed}
    info["seconds"] = round(time.perf_counter() - started, 1)
    return url, info


def time_evaluate(url: str, holdout: float, max_users: int | None) -> dict[str, Any]:
    """Create the candidate and run `recsql evaluate` on ``url``; wall time, phases and NDCG@10."""
    with db.connection(url) as conn:
        conn.execute("DELETE FROM recsql.models WHERE name = %s AND status = 'candidate'", (CANDIDATE,))
        conn.execute(
            "INSERT INTO recsql.models (name, params, description)"
            " SELECT %s, recsql.check_params(%s), 'bench/quality.py tuned settings'",
            (CANDIDATE, Jsonb(quality.TUNED)),
        )
    command = ["recsql", "evaluate", "--model", CANDIDATE, "--holdout-last", str(holdout)]
    command += ["--format", "json", "--progress"] + (["--max-users", str(max_users)] if max_users else [])
    log("$ " + " ".join(command))
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "recsql", *command[1:]],
        env=dict(os.environ, RECSQL_DATABASE_URL=url),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    doc = json.loads(done.stdout)
    ndcg = {s["model"]: s["value"] for s in doc["scores"] if s["metric"] == "ndcg" and s["k"] == 10}
    return {
        "command": " ".join(command),
        "wall_seconds": round(wall, 1),
        "phases_seconds": {k: round(v, 1) for k, v in doc["seconds"].items()},
        "split": doc["split"],
        "test_users": doc["users"],
        "ndcg@10": ndcg,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("ml-100k", "synthetic", "both"), default="both")
    parser.add_argument("--data-dir", type=Path, default=quality.DATA_DIR)
    parser.add_argument("--events", type=int, default=1_000_000, help="synthetic stream length")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=None, help="Default: events / 20, as bench/ingest.py.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--holdout-last", type=float, default=0.2)
    parser.add_argument("--max-users", type=int, default=None, help="passed to recsql evaluate")
    parser.add_argument("--out", default="eval.json", help="File name under bench/results/.")
    args = parser.parse_args()

    server = benchdb.server_url()
    machine = benchdb.machine(server)
    log(benchdb.describe(machine))
    runs = []
    if args.dataset in ("ml-100k", "both"):
        url, info = ml100k_source(server, args.data_dir)
        runs.append({**info, **time_evaluate(url, args.holdout_last, args.max_users)})
        log(json.dumps(runs[-1]))
    if args.dataset in ("synthetic", "both"):
        users = args.users or max(10, args.events // 20)
        url, info = synthetic_source(server, args.events, args.items, users, args.seed)
        runs.append({**info, **time_evaluate(url, args.holdout_last, args.max_users)})
        log(json.dumps(runs[-1]))
    path = benchdb.save(args.out, {"machine": machine, "args": vars(args), "runs": runs})
    print(f"\n{'dataset':10s} {'events':>10s} {'test users':>10s} {'replay':>8s} {'total':>8s}  phases (s)")
    for r in runs:
        phases = ", ".join(f"{k} {v}" for k, v in r["phases_seconds"].items() if k not in ("replay", "total"))
        print(
            f"{r['dataset']:10s} {r['events']:10,d} {r['test_users']:10,d} {r['phases_seconds']['replay']:8.1f}"
            f" {r['wall_seconds']:8.1f}  {phases}"
        )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
