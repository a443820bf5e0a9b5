"""The `behavior` space: item vectors factorised from the co-occurrence counts in item_pairs.

The maths, for counts c(a,b) (``item_pairs`` kind 'v', read in both directions, self-pairs ignored):

* Row sums r(a) = sum_b c(a,b), total N = sum_a r(a), smoothed normaliser Z = sum_a r(a)^alpha.
* Shifted positive PMI with context-distribution smoothing (Levy & Goldberg 2015) applied to both
  sides, so the matrix stays symmetric::

      M(a,b) = max(0, log c(a,b) + 2 log Z - log N - alpha log r(a) - alpha log r(b) - shift)

* M ~ Q diag(lambda) Q^T: the ``dim`` largest positive eigenpairs (a symmetric matrix's SVD,
  keeping only components with U = V). An item's vector is its row of Q, L2-normalised. Scaling
  the components by sqrt(lambda) (U sqrt(S)) before normalising measured slightly worse on
  MovieLens-100k, so they are left unscaled.
* Fold-in of one item x from its current row: since M Q = Q diag(lambda), its row of Q is
  q(x) = m(x) Q diag(1/lambda), where m(x) is its PPMI row computed with the fit's N and Z and
  the partners' row sums. The stored vectors are normalised rows of Q, so they stand in for the
  partners' rows of Q (this weights each partner by 1/|q(partner)|); on MovieLens-100k the
  folded-in vector of every fitted item has cosine >= 0.93 with its fitted one.

When the data support fewer than ``dim`` positive components (a tiny catalog), the missing
components are zero, so vectors always have ``dim`` entries and fit a fixed-width vector column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

# Names the formula above; a stored meta with another scheme cannot be folded into.
SCHEME = "ppmi-eig-v1"
ALPHA = 0.5
# Below this many items a dense eigendecomposition is exact and fast enough.
DENSE_LIMIT = 1000

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Fit:
    """The vectors of every item with pairs, and what fold_in needs to add items later."""

    item_keys: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float32]
    sigma: Floats
    totals: dict[str, float]
    row_sums: Floats
    alpha: float
    shift: float
    min_count: int

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def meta(self) -> dict[str, Any]:
        """Return the JSON-serialisable parameters fold_in needs."""
        return {
            "scheme": SCHEME,
            "dim": self.dim,
            "alpha": self.alpha,
            "shift": self.shift,
            "min_count": self.min_count,
            "total": self.totals["total"],
            "context_norm": self.totals["context_norm"],
            "sigma": [float(s) for s in self.sigma],
        }


def _ppmi(
    counts: Floats, r_a: Floats, r_b: Floats, total: float, norm: float, alpha: float, shift: float
) -> Floats:
    pmi = np.log(counts) + 2 * np.log(norm) - np.log(total) - alpha * (np.log(r_a) + np.log(r_b)) - shift
    positive: Floats = np.maximum(pmi, 0.0)
    return positive


def _top_eigen(m: sp.csr_matrix, dim: int, seed: int) -> tuple[Floats, Floats]:
    """Return the largest ``dim`` eigenpairs of symmetric ``m``, zeroing non-positive ones."""
    size = m.shape[0]
    if size <= DENSE_LIMIT:
        lam, q = np.linalg.eigh(m.toarray())
        lam, q = lam[::-1][:dim], q[:, ::-1][:, :dim]
    else:
        v0 = np.random.default_rng(seed).standard_normal(size)
        lam, q = eigsh(m, k=min(dim, size - 1), which="LA", v0=v0)
        order = np.argsort(-lam)
        lam, q = lam[order], q[:, order]
    keep = lam > max(float(lam.max(initial=0.0)), 0.0) * 1e-9
    lam, q = np.where(keep, lam, 0.0), np.where(keep, q, 0.0)
    # Eigenvectors have no sign; fix one so refits give the same vectors.
    biggest = np.abs(q).argmax(axis=0)
    q = q * np.where(q[biggest, np.arange(q.shape[1])] < 0, -1.0, 1.0)
    width = q.shape[1]
    if width < dim:
        lam = np.pad(lam, (0, dim - width))
        q = np.pad(q, ((0, 0), (0, dim - width)))
    return lam, q


def fit(
    item_a: npt.ArrayLike,
    item_b: npt.ArrayLike,
    n: npt.ArrayLike,
    dim: int = 64,
    *,
    min_count: int = 1,
    alpha: float = ALPHA,
    shift: float = 0.0,
    seed: int = 0,
) -> Fit:
    """Factorise the co-occurrence counts (item_a, item_b, n) into ``dim``-wide item vectors.

    Rows are expected in both directions, as store.pairs() reads them; a pair given in one
    direction only is mirrored. Pairs with n < min_count are ignored. Items left without a
    positive PMI entry get no vector. Empty input gives an empty Fit.
    """
    a = np.asarray(item_a, dtype=np.int64).ravel()
    b = np.asarray(item_b, dtype=np.int64).ravel()
    c = np.asarray(n, dtype=np.float64).ravel()
    if not len(a) == len(b) == len(c):
        raise ValueError(f"item_a, item_b and n must have the same length, got {len(a)}, {len(b)}, {len(c)}")
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("pair counts must be finite and non-negative")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if shift < 0:
        raise ValueError(f"shift must not be negative, got {shift}")

    keep = (a != b) & (c >= min_count)
    a, b, c = a[keep], b[keep], c[keep]
    keys, codes = np.unique(np.concatenate([a, b]), return_inverse=True)
    size = len(keys)
    counts = sp.csr_matrix((c, (codes[: len(a)], codes[len(a) :])), shape=(size, size))
    counts = counts.maximum(counts.T).tocoo()
    row_sums = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    total = float(row_sums.sum())
    norm = float((row_sums**alpha).sum())

    values = (
        _ppmi(counts.data, row_sums[counts.row], row_sums[counts.col], total, norm, alpha, shift)
        if size
        else np.zeros(0)
    )
    m = sp.csr_matrix((values, (counts.row, counts.col)), shape=(size, size))
    m.eliminate_zeros()
    if size >= 2 and m.nnz:
        lam, q = _top_eigen(m, dim, seed)
    else:
        lam, q = np.zeros(dim), np.zeros((size, dim))
    lengths = np.linalg.norm(q, axis=1)
    has = lengths > 1e-12
    return Fit(
        item_keys=keys[has].astype(np.int64),
        vectors=(q[has] / lengths[has, None]).astype(np.float32),
        sigma=lam.astype(np.float64),
        totals={"total": total, "context_norm": norm},
        row_sums=row_sums[has],
        alpha=float(alpha),
        shift=float(shift),
        min_count=int(min_count),
    )


def fold_in(
    partners: npt.ArrayLike,
    counts: npt.ArrayLike,
    partner_vectors: npt.ArrayLike,
    partner_row_sums: npt.ArrayLike,
    meta: dict[str, Any],
    *,
    row_sum: float | None = None,
) -> npt.NDArray[np.float32] | None:
    """Compute one item's vector from its co-occurrence row and its partners' stored vectors.

    ``partners`` (keys), ``counts`` c(x, partner), the partners' vectors (a row of NaN for a
    partner without one) and their row sums (sum of n over their pairs with n >= min_count).
    ``row_sum`` is the item's own row sum; by default the sum of ``counts``, right when the whole
    row is passed (partners without a vector included, as NaN rows). ``meta`` is Fit.meta() of
    the fit the vectors came from. Returns the L2-normalised vector, or None when no partner
    with a vector carries positive PMI.
    """
    if meta.get("scheme") != SCHEME:
        raise ValueError(f"meta is from scheme {meta.get('scheme')!r}, expected {SCHEME!r}; refit first")
    dim, sigma = int(meta["dim"]), np.asarray(meta["sigma"], dtype=np.float64)
    keys = np.asarray(partners, dtype=np.int64).ravel()
    c = np.asarray(counts, dtype=np.float64).ravel()
    r = np.asarray(partner_row_sums, dtype=np.float64).ravel()
    vectors = np.asarray(partner_vectors, dtype=np.float64)
    if not len(keys) == len(c) == len(r) == len(vectors):
        raise ValueError(
            f"partners, counts, vectors and row sums differ in length: {len(keys)}, {len(c)},"
            f" {len(vectors)}, {len(r)}"
        )
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(sigma) != dim:
        raise ValueError(f"partner vectors must have shape (k, {dim}) like the fit, got {vectors.shape}")
    if len(np.unique(keys)) != len(keys):
        raise ValueError("partners must be distinct")

    use = c >= int(meta["min_count"])
    c, r, vectors = c[use], r[use], vectors[use]
    if not len(c):
        return None
    own_sum = float(c.sum()) if row_sum is None else max(float(row_sum), float(c.sum()))
    known = ~np.isnan(vectors).any(axis=1)
    row = _ppmi(
        c[known],
        np.full(int(known.sum()), own_sum),
        np.maximum(r[known], c[known]),  # a partner's row contains at least this pair
        float(meta["total"]),
        float(meta["context_norm"]),
        float(meta["alpha"]),
        float(meta["shift"]),
    )
    inverse = np.divide(1.0, sigma, out=np.zeros(dim), where=sigma > 0)
    q = (row @ vectors[known]) * inverse
    length = float(np.linalg.norm(q))
    if length <= 1e-12:
        return None
    return (q / length).astype(np.float32)
