"""/openapi.json describes every route the app serves, with the event types the database knows."""

from __future__ import annotations

from web.spec import REGISTRY


def test_document_covers_every_api_route(client, app):
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if rule.endpoint.split(".")[0] in ("tracking", "reading", "admin"):
                served.add((method, path))
    assert served == documented
    assert len(documented) == len(REGISTRY) == 14


def test_event_types_are_read_from_the_database(client, conn):
    conn.execute("INSERT INTO recsql.event_types (name, weight) VALUES ('share', 2)")
    doc = client.get("/openapi.json").get_json()
    event = doc["paths"]["/track-event"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "share" in event["properties"]["eventType"]["enum"]
    assert "view" in event["properties"]["eventType"]["enum"]


def test_every_operation_documents_its_errors(client):
    doc = client.get("/openapi.json").get_json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert {"429", "500", "503"} <= set(op["responses"]), (method, path)
            if "security" in op:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
