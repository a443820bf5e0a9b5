"""Browser tests: real headless Chromium (Playwright) against the Flask app served on a loopback port.

They need the ``playwright`` Python package and Chromium at /usr/bin/chromium (Debian's package;
no browser is ever downloaded). Without either, every test here is skipped and says which is missing.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import OTHER_HOST, SHOP_HOST, Conn, Server, Tab, host_pages, seed

CHROMIUM = Path("/usr/bin/chromium")
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None


# CI sets RECSQL_REQUIRE_BROWSER=1: there a missing browser is a failure, not a skip.
REQUIRED = os.environ.get("RECSQL_REQUIRE_BROWSER") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}; RECSQL_REQUIRE_BROWSER=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole run."""
    if not HAVE_PLAYWRIGHT:
        _missing("browser tests need the playwright package (pip install playwright)")
    if not CHROMIUM.exists():
        _missing(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--host-resolver-rules=MAP {SHOP_HOST} 127.0.0.1, MAP {OTHER_HOST} 127.0.0.1",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def new_tab(browser: Any) -> Iterator[Callable[[], Tab]]:
    """Factory of tabs, each in a fresh context; all closed after the test."""
    contexts: list[Any] = []

    def make() -> Tab:
        context = browser.new_context()
        context.set_default_timeout(10_000)
        contexts.append(context)
        return Tab(context.new_page())

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def tab(new_tab: Callable[[], Tab]) -> Tab:
    return new_tab()


@pytest.fixture
def serve(db_url: str) -> Iterator[Callable[..., Server]]:
    """Start create_app({DATABASE_URL: the test database, **config}) on a loopback port."""
    import web  # imported here: the test modules must load (and skip) without the app's dependencies
    from web import pool

    started: list[tuple[Server, Any]] = []

    def start(**config: Any) -> Server:
        app = web.create_app({"DATABASE_URL": db_url, **config})
        server = Server(app)
        started.append((server, app))
        return server

    yield start
    for server, app in started:
        server.stop()
        pool.close(app)  # before the database is dropped under it


@pytest.fixture
def pages_server() -> Iterator[Server]:
    """Host pages on other origins: http://shop.test:<port>/e2e/..., http://other.test:<port>/e2e/..."""
    server = Server(host_pages)
    yield server
    server.stop()


@pytest.fixture
def shop(conn: Conn) -> Conn:
    """The test database with the catalog and other shoppers' history loaded and folded."""
    seed(conn)
    return conn
