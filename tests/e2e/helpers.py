"""Plain helpers for the browser tests: a threaded WSGI server, host pages, a seeded shop, polling."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from recsql import api, load

Conn = psycopg.Connection[Any]

# Made-up host names for pages on other origins than the API; the browser maps both to loopback.
SHOP_HOST = "shop.test"
OTHER_HOST = "other.test"

CATALOG = [
    {"item_id": "lamp", "title": "Desk lamp", "category": "home", "price": 30, "in_stock": True},
    {"item_id": "bulb", "title": "LED bulb", "category": "home", "price": 5, "in_stock": True},
    {"item_id": "shade", "title": "Lamp shade", "category": "home", "price": 12, "in_stock": True},
    {"item_id": "desk", "title": "Oak desk", "category": "home", "price": 240, "in_stock": True},
    {"item_id": "ball", "title": "Football", "category": "sport", "price": 20, "in_stock": True},
    {"item_id": "pump", "title": "Ball pump", "category": "sport", "price": 8, "in_stock": True},
    {"item_id": "boots", "title": "Football boots", "category": "sport", "price": 70, "in_stock": True},
    {"item_id": "socks", "title": "Sport socks", "category": "sport", "price": 6, "in_stock": True},
]

# Other shoppers (user, viewed, bought): the lamp goes with bulb and shade; sport items are the
# most popular, so they lead the trending list and a newcomer's recommendations.
HISTORY = [
    ("h1", ["lamp", "bulb", "shade"], ["lamp", "bulb"]),
    ("h2", ["lamp", "bulb"], ["bulb"]),
    ("h3", ["lamp", "shade", "desk"], []),
    ("s1", ["ball", "pump", "boots"], ["ball", "pump"]),
    ("s2", ["ball", "boots", "socks"], ["boots"]),
    ("s3", ["ball", "pump"], ["ball"]),
    ("s4", ["boots", "socks", "ball"], ["socks"]),
    ("s5", ["ball", "socks"], []),
    ("s6", ["boots", "pump", "socks"], ["boots", "pump", "socks"]),
    ("s7", ["ball", "socks"], ["ball", "socks"]),
]


def seed(conn: Conn) -> None:
    """Load CATALOG and HISTORY and fold them, so similar items and trending exist."""
    load.upsert_items(conn, CATALOG)
    for user, viewed, bought in HISTORY:
        for item in viewed:
            api.track(conn, user, item, "view")
        for item in bought:
            api.track(conn, user, item, "purchase")
    api.flush(conn)


HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tracker host</title>
<script>
  window.__errors = [];
  addEventListener('error', (e) => __errors.push('error: ' + e.message));
  addEventListener('unhandledrejection', (e) => __errors.push('unhandled rejection: ' + e.reason));
  const api = new URLSearchParams(location.search).get('api') || '';
  document.write('<script src="' + api + '/recsql.js"><\\/script>');
</script>
</head><body><p id="host">a host page</p></body></html>
"""


@Request.application
def host_pages(request: Request) -> Response:
    """A host page that loads the tracker from ``?api=<origin>`` (or its own origin)."""
    return Response(HOST_PAGE, mimetype="text/html")


@dataclass
class Seen:
    """A request as the server received it, and the status it answered (0 until it has)."""

    method: str
    path: str
    query: str
    content_type: str
    origin: str
    body: bytes
    status: int = 0


class Server:
    """A WSGI app on 127.0.0.1 (port chosen by the OS), served by a thread until stop().

    Host pages are served under /e2e/ on the same origin, and every other request is kept in
    ``seen`` (what the browser really sent, beacons included).
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.seen: list[Seen] = []
        self._app = wsgi_app
        self._server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/e2e/"):
            return host_pages(environ, start_response)
        request = Request(environ)
        body = request.get_data()
        environ["wsgi.input"] = io.BytesIO(body)  # put it back for the app
        environ["CONTENT_LENGTH"] = str(len(body))
        seen = Seen(
            method=request.method,
            path=path,
            query=request.query_string.decode(),
            content_type=request.headers.get("Content-Type", ""),
            origin=request.headers.get("Origin", ""),
            body=body,
        )
        self.seen.append(seen)

        def answer(status: str, headers: Any, *rest: Any) -> Any:
            seen.status = int(status.split()[0])
            return start_response(status, headers, *rest)

        return self._app(environ, answer)

    def posts(self, path: str) -> list[Seen]:
        """The POST requests to ``path`` received so far."""
        return [s for s in self.seen if s.method == "POST" and s.path == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class Tab:
    """A page in its own browser context (cookies, storage), keeping its console lines and errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def warnings(self) -> list[str]:
        """What the tracker logged."""
        return [line for line in self.console if "[recsql]" in line]

    def page_errors(self) -> list[str]:
        """Uncaught errors and unhandled rejections in the page."""
        return [*self.errors, *self.page.evaluate("window.__errors || []")]

    def open_tracker(self, base: str, *, api: str = "", **options: Any) -> None:
        """Open a host page at ``base`` with the tracker (from ``api``, else ``base``) initialised."""
        self.page.goto(f"{base}/e2e/host" + (f"?api={api}" if api else ""))
        self.page.wait_for_function("window.recsql && window.recsql.__recsql === true")
        self.page.evaluate("(o) => recsql.init(o)", {"endpoint": api, **options})


def events_of(conn: Conn, user_id: str) -> list[dict[str, Any]]:
    """The stored events of one user, in arrival order."""
    return list(
        conn.execute(
            "SELECT event_id, event_type, item_id, value, session_id, recommendation_id"
            " FROM recsql.events WHERE user_id = %s ORDER BY seq",
            (user_id,),
        ).fetchall()
    )


def count_events(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()
    assert row is not None
    return int(row["n"])


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def unused_port() -> int:
    """A loopback port nothing listens on (just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
