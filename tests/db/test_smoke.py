from recsql import api


def test_track_then_recommend(conn):
    api.track(conn, "u1", "a", "view")
    api.track(conn, "u1", "b", "view")
    api.track(conn, "u2", "a", "view")
    assert api.flush(conn) == 3
    assert [r["item_id"] for r in api.similar_items(conn, "a")] == ["b"]
    assert [r["item_id"] for r in api.recommend(conn, "u2", 1)] == ["b"]
