"""The behavior space: PPMI factorisation of co-occurrence counts, and folding in one item."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsql.embeddings import behavior

GROUPS = 3
PER_GROUP = 12


def planted(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return pairs (both directions) of 3 groups that co-occur within the group, plus weak noise."""
    rng = np.random.default_rng(seed)
    pairs: dict[tuple[int, int], int] = {}
    keys = np.arange(GROUPS * PER_GROUP) + 100
    for i, x in enumerate(keys):
        for j in range(i + 1, len(keys)):
            y = keys[j]
            same = i // PER_GROUP == j // PER_GROUP
            if same and rng.random() < 0.7:
                pairs[int(x), int(y)] = int(rng.integers(3, 20))
            elif not same and rng.random() < 0.05:
                pairs[int(x), int(y)] = 1
    a = np.array([k[0] for k in pairs] + [k[1] for k in pairs], dtype=np.int64)
    b = np.array([k[1] for k in pairs] + [k[0] for k in pairs], dtype=np.int64)
    n = np.array(list(pairs.values()) * 2, dtype=np.int64)
    return a, b, n


def group(key: int) -> int:
    return (key - 100) // PER_GROUP


def row_of(key: int, a: np.ndarray, b: np.ndarray, n: np.ndarray, fitted: behavior.Fit):
    """Return the fold_in inputs for item ``key`` from the pairs and a fit, as the worker would."""
    index = {int(k): i for i, k in enumerate(fitted.item_keys)}
    mine = a == key
    partners, counts = b[mine], n[mine]
    vectors = np.stack([fitted.vectors[index[int(p)]] for p in partners])
    sums = np.array([fitted.row_sums[index[int(p)]] for p in partners])
    return partners, counts, vectors, sums


def test_planted_groups_are_nearest_neighbours():
    a, b, n = planted()
    fitted = behavior.fit(a, b, n, dim=8)
    assert fitted.vectors.shape == (GROUPS * PER_GROUP, 8)
    assert fitted.vectors.dtype == np.float32
    assert fitted.item_keys.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(fitted.vectors, axis=1), 1.0, atol=1e-5)
    sims = fitted.vectors @ fitted.vectors.T
    np.fill_diagonal(sims, -np.inf)
    for i, key in enumerate(fitted.item_keys):
        top = fitted.item_keys[np.argsort(-sims[i])[:3]]
        assert [group(int(k)) for k in top] == [group(int(key))] * 3


def test_fold_in_reproduces_fitted_vectors():
    a, b, n = planted()
    # Six components for three planted groups: the extra ones model noise within the groups,
    # where standing in normalised vectors for the partners' factor rows is least exact.
    fitted = behavior.fit(a, b, n, dim=6)
    meta = json.loads(json.dumps(fitted.meta()))  # as stored in jsonb
    for i, key in enumerate(fitted.item_keys):
        partners, counts, vectors, sums = row_of(int(key), a, b, n, fitted)
        folded = behavior.fold_in(partners, counts, vectors, sums, meta)
        assert folded is not None
        assert folded.shape == (6,)
        assert folded.dtype == np.float32
        assert float(np.linalg.norm(folded)) == pytest.approx(1.0, abs=1e-5)
        assert float(folded @ fitted.vectors[i]) > 0.9


def test_fold_in_of_a_new_item_lands_in_its_group():
    a, b, n = planted()
    fitted = behavior.fit(a, b, n, dim=8)
    partners = np.array([112, 115, 118, 120, 123])  # all in group 1
    index = {int(k): i for i, k in enumerate(fitted.item_keys)}
    rows = [index[int(p)] for p in partners]
    # The partners' row sums grow by this item's pairs, as item_pairs would show them.
    counts = np.full(len(partners), 4)
    new = behavior.fold_in(partners, counts, fitted.vectors[rows], fitted.row_sums[rows] + 4, fitted.meta())
    assert new is not None
    groups = (fitted.item_keys - 100) // PER_GROUP
    centroid_sims = [float(new @ fitted.vectors[groups == g].mean(axis=0)) for g in range(GROUPS)]
    assert int(np.argmax(centroid_sims)) == 1
    nearest = fitted.item_keys[np.argsort(-(fitted.vectors @ new))[:5]]
    assert {group(int(k)) for k in nearest} == {1}


def test_fold_in_without_usable_partners_is_none():
    a, b, n = planted()
    fitted = behavior.fit(a, b, n, dim=8)
    meta = fitted.meta()
    empty = behavior.fold_in(np.array([], dtype=np.int64), np.array([]), np.zeros((0, 8)), np.array([]), meta)
    assert empty is None
    unknown = np.full((2, 8), np.nan)
    assert behavior.fold_in(np.array([1, 2]), np.array([5, 5]), unknown, np.array([10, 10]), meta) is None


def test_fold_in_counts_partners_without_a_vector_in_the_row_sum():
    a, b, n = planted()
    fitted = behavior.fit(a, b, n, dim=8)
    partners, counts, vectors, sums = row_of(110, a, b, n, fitted)
    meta = fitted.meta()
    full = behavior.fold_in(partners, counts, vectors, sums, meta)
    # One partner lost its vector: passed as NaN, or left out with the row sum given instead.
    vectors_nan = vectors.copy()
    vectors_nan[0] = np.nan
    with_nan = behavior.fold_in(partners, counts, vectors_nan, sums, meta)
    rest = (partners[1:], counts[1:], vectors[1:], sums[1:], meta)
    left_out = behavior.fold_in(*rest, row_sum=float(counts.sum()))
    row_shrunk = behavior.fold_in(*rest)
    assert full is not None and with_nan is not None and left_out is not None and row_shrunk is not None
    np.testing.assert_allclose(with_nan, left_out, atol=1e-6)
    assert not np.allclose(with_nan, full, atol=1e-3)
    assert not np.allclose(with_nan, row_shrunk, atol=1e-3)


def test_fit_is_deterministic_and_independent_of_row_order():
    a, b, n = planted()
    first = behavior.fit(a, b, n, dim=8, seed=3)
    again = behavior.fit(a, b, n, dim=8, seed=3)
    np.testing.assert_array_equal(first.vectors, again.vectors)
    order = np.random.default_rng(0).permutation(len(a))
    shuffled = behavior.fit(a[order], b[order], n[order], dim=8, seed=3)
    np.testing.assert_array_equal(first.item_keys, shuffled.item_keys)
    np.testing.assert_allclose(first.vectors, shuffled.vectors, atol=1e-6)
    np.testing.assert_allclose(first.sigma, shuffled.sigma, rtol=1e-9)


def test_sparse_solver_agrees_with_the_dense_one(monkeypatch: pytest.MonkeyPatch):
    a, b, n = planted()
    dense = behavior.fit(a, b, n, dim=4)
    monkeypatch.setattr(behavior, "DENSE_LIMIT", 0)
    sparse = behavior.fit(a, b, n, dim=4, seed=7)
    np.testing.assert_allclose(sparse.sigma, dense.sigma, rtol=1e-8)
    np.testing.assert_allclose(sparse.vectors, dense.vectors, atol=1e-5)


def test_meta_is_json_and_complete():
    a, b, n = planted()
    fitted = behavior.fit(a, b, n, dim=8, alpha=0.75, shift=0.5, min_count=2)
    meta = fitted.meta()
    assert json.loads(json.dumps(meta)) == meta
    assert meta["scheme"] == behavior.SCHEME
    assert (meta["dim"], meta["alpha"], meta["shift"], meta["min_count"]) == (8, 0.75, 0.5, 2)
    kept = n >= 2
    assert meta["total"] == pytest.approx(float(n[kept].sum()))
    assert len(meta["sigma"]) == 8
    assert meta["sigma"] == sorted(meta["sigma"], reverse=True)


def test_min_count_drops_pairs_and_items_left_without_pairs():
    a = np.array([1, 2, 1, 3, 2, 3, 3, 4])
    b = np.array([2, 1, 3, 1, 3, 2, 4, 3])
    n = np.array([5, 5, 5, 5, 5, 5, 1, 1])
    assert 4 in behavior.fit(a, b, n, dim=2).item_keys
    fitted = behavior.fit(a, b, n, dim=2, min_count=2)
    assert fitted.item_keys.tolist() == [1, 2, 3]
    assert fitted.totals["total"] == 30


def test_one_direction_is_mirrored_and_self_pairs_ignored():
    a, b, n = planted()
    half = a < b
    both = behavior.fit(a, b, n, dim=8)
    one = behavior.fit(np.r_[a[half], 105], np.r_[b[half], 105], np.r_[n[half], 50], dim=8)
    np.testing.assert_array_equal(both.item_keys, one.item_keys)
    np.testing.assert_allclose(both.vectors, one.vectors, atol=1e-6)


def test_empty_input_gives_an_empty_fit():
    fitted = behavior.fit(np.array([]), np.array([]), np.array([]), dim=16)
    assert fitted.item_keys.shape == (0,)
    assert fitted.vectors.shape == (0, 16)
    assert fitted.sigma.tolist() == [0.0] * 16
    assert fitted.meta()["total"] == 0.0


def test_tiny_input_pads_to_the_requested_dimension():
    fitted = behavior.fit(np.array([7, 9]), np.array([9, 7]), np.array([3, 3]), dim=16)
    assert fitted.item_keys.tolist() == [7, 9]
    assert fitted.vectors.shape == (2, 16)
    assert np.count_nonzero(fitted.sigma) == 1
    np.testing.assert_allclose(fitted.vectors[:, 1:], 0.0)
    np.testing.assert_allclose(fitted.vectors[0], fitted.vectors[1], atol=1e-6)
    folded = behavior.fold_in(
        np.array([9]), np.array([3]), fitted.vectors[1:], np.array([3.0]), fitted.meta()
    )
    assert folded is not None
    np.testing.assert_allclose(folded, fitted.vectors[0], atol=1e-6)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([1, 2], [2], [1, 1]), {}, "same length"),
        (([1, 2], [2, 1], [1, 1]), {"dim": 0}, "dim must be at least 1"),
        (([1, 2], [2, 1], [1, -1]), {}, "non-negative"),
        (([1, 2], [2, 1], [1, np.nan]), {}, "finite"),
        (([1, 2], [2, 1], [1, 1]), {"min_count": 0}, "min_count"),
        (([1, 2], [2, 1], [1, 1]), {"alpha": 0.0}, "alpha"),
        (([1, 2], [2, 1], [1, 1]), {"shift": -1.0}, "shift"),
    ],
)
def test_fit_rejects_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        item_a, item_b, n = (np.array(x) for x in args)
        behavior.fit(item_a, item_b, n, **kwargs)


def test_fold_in_rejects_bad_input():
    a, b, n = planted()
    meta = behavior.fit(a, b, n, dim=8).meta()
    ok = (np.array([100, 101]), np.array([2, 3]), np.ones((2, 8)), np.array([10.0, 10.0]))
    with pytest.raises(ValueError, match="refit first"):
        behavior.fold_in(*ok, {**meta, "scheme": "other"})
    with pytest.raises(ValueError, match="differ in length"):
        behavior.fold_in(ok[0], ok[1][:1], ok[2], ok[3], meta)
    with pytest.raises(ValueError, match=r"shape \(k, 8\) like the fit, got \(2, 4\)"):
        behavior.fold_in(ok[0], ok[1], np.ones((2, 4)), ok[3], meta)
    with pytest.raises(ValueError, match="distinct"):
        behavior.fold_in(np.array([100, 100]), *ok[1:], meta)
