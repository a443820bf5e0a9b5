"""`recsql serve --workers N`: gunicorn workers answer, share one key table and one metrics view."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from recsql import keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_gunicorn_workers_serve_and_merge_metrics(db_url, conn):
    key = keys.create(conn, "track").key
    port = _free_port()
    env = {**os.environ, "RECSQL_DATABASE_URL": db_url}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsql", "serve", "--workers", "2", "--threads", "2", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = _request(base + "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for i in range(20):
            event = json.dumps({"eventType": "view", "productId": f"p{i}", "userId": "u1"}).encode()
            status, body = _request(base + "/track-event", event, headers)
            assert status == 200, body
        status, metrics = _request(base + "/metrics")
        assert status == 200
        line = next(
            m
            for m in metrics.splitlines()
            if m.startswith('recsql_events_ingested_total{outcome="accepted"}')
        )
        assert float(line.split()[-1]) == 20.0  # summed over both workers
        assert conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()["n"] == 20
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
