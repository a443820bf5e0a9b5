from web import create_app


def test_healthz_needs_no_database():
    client = create_app({"DATABASE_URL": "postgresql://nobody@/none?host=/nonexistent"}).test_client()
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_reports_migrated_database(db_url):
    client = create_app({"DATABASE_URL": db_url}).test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_readyz_is_503_when_database_is_unreachable(tmp_path):
    client = create_app(
        {"DATABASE_URL": f"postgresql://nobody@/none?host={tmp_path}&connect_timeout=2"}
    ).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"
