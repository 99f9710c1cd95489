"""Exact nearest-neighbour search over a fixed key matrix (PRDC's dataset constraint; docs/agents/prdc.md).

What a query returns (both backends, by construction): rows are ordered by

    (exact squared distance, row index),   exact squared distance = sum_d (x_d - q_d)^2 in float64,

accumulated over the dimensions in order (:func:`exact_sq_dist`), from the float32 keys and queries.
``query(q, k)`` returns the ``k``-th row of that order (``k=1``: the nearest neighbour), i.e. exact ties go
to the **lowest row index**. This is the neighbour ``scipy.spatial.KDTree`` returns whenever the nearest
distance is unique; for exact ties KDTree returns whichever tied row its traversal meets first, so the
tie-break is ours, made explicit. (Rows whose float64 distances differ only by rounding, ~1e-16
relative, are ordered by our fixed summation order; KDTree's unrolled sum may round them differently.)

Two backends, one definition:

* :class:`TreeIndex` (CPU): ``scipy.spatial.cKDTree`` over the keys (float64; sliding-midpoint build, about
  a second for 1M x 23). One ``(k+1)``-NN search per query, pruned at a bound on the k-th distance: the
  caller's hint (PRDC: the batch row's own key is in the index) or, without one, a plain k-NN search
  first. The search returns the k nearest and shows that the ``(k+1)``-th is strictly farther (by more than
  1e-12 relative, 300x the tree's float64 rounding), so the answer is the k-th of them in the order
  above; otherwise (an exact tie, e.g. duplicated rows, or a wrong hint) every row within the k-th
  distance is fetched with a ball query and ranked exactly. scipy takes one scalar bound per call, so each
  query gets its own bound through one extra coordinate: the tree holds the keys with a zero column
  appended, query ``q`` searches from ``(q, h_q)`` with ``h_q^2 = R^2 - b_q^2`` under the common radius ``R``,
  and ``|(x, 0) - (q, h_q)|^2 = |x - q|^2 + h_q^2 <= R^2`` exactly when ``|x - q| <= b_q``: all queries in one
  call, each pruned at its own bound (the certificate is checked on these augmented distances, whose order
  per query is the order of the true ones). ``workers`` defaults to torch's CPU thread count (the run's
  ``threads`` setting). See ``scripts/bench_knn.py`` for its cost next to the official plain
  ``KDTree.query(k=1)`` (which does not resolve ties).
* :class:`AutoIndex` (the CPU default for large key sets): both of the paths below over the same keys; each
  query call goes to whichever is currently faster (timed while running; identical answers, so the choice
  never changes a run). The tree wins near the data and on structured, low-dimensional keys; the brute force
  wins when the queries are far from the data in many dimensions (an untrained policy), where the tree
  degenerates towards a full scan with a pointer chase per row.
* :class:`BruteForceIndex` (any torch device; the GPU path): chunked ``|x|^2 - 2 x.q + |q|^2`` matmuls in
  ``precision`` (float32 by default, TF32 off) keep a running top-``K`` of approximate distances per query;
  the ``K`` candidates are re-ranked with the exact float64 distance. A rigorous bound on the matmul's
  rounding error, ``err(q) = 4 (D + 8) u (max_i |x_i| + |q|)^2`` with ``u`` the unit roundoff (keys
  centred on their mean), certifies the answer when the ``k``-th exact candidate is closer than the
  ``K``-th approximate distance minus ``err``. For uncertified queries (rare; one host sync per query
  call checks for them) every row whose approximate distance is within ``2 err`` of the candidate is
  re-checked exactly, so cancellation can never pick a wrong neighbour. For ``k = 1`` on the CPU the running
  top-``K`` is replaced by the two smallest approximate distances per chunk (two SIMD ``argmin`` passes over a
  reused buffer; a CPU top-K costs more than the matmul); the same certificate then uses the second-smallest
  approximate distance of all other rows.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AUTO_MIN_ROWS", "AutoIndex", "BACKENDS", "BruteForceIndex", "KNNIndex", "TreeIndex", "brute_force_reference", "build_index", "exact_sq_dist",
    "kth_in_rows",
]

BACKENDS = ("auto", "tree", "brute")
AUTO_MIN_ROWS = 50_000  # below this the tree costs ~1 ms per 256 keys: auto keeps the tree alone


def exact_sq_dist(rows: Tensor | np.ndarray, queries: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """``sum_d (rows_d - queries_d)^2`` in float64, accumulated over ``d`` in order (broadcasting).

    The summation order is fixed (no reductions with device-dependent association) and each step is one IEEE
    operation, so torch (any device) and numpy inputs give bit-identical distances: the CPU tree and the device
    brute-force paths apply the same tie-break.
    """
    if isinstance(rows, np.ndarray):
        diff = rows.astype(np.float64) - np.asarray(queries, dtype=np.float64)
    else:
        diff = rows.to(torch.float64) - torch.as_tensor(queries).to(rows.device, torch.float64)
    sq = diff * diff
    acc = sq[..., 0].copy() if isinstance(sq, np.ndarray) else sq[..., 0].clone()
    for d in range(1, sq.shape[-1]):
        acc += sq[..., d]
    return acc


def kth_in_rows(dist: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row of ``(P, K)`` candidates, the ``k``-th (1-based) in the order (distance, index)."""
    by_idx = torch.sort(idx, dim=1, stable=True)
    d = dist.gather(1, by_idx.indices)
    by_dist = torch.sort(d, dim=1, stable=True)
    i = by_idx.values.gather(1, by_dist.indices)
    return by_dist.values[:, k - 1], i[:, k - 1]


def _kth_in_groups(group: Tensor, dist: Tensor, idx: Tensor, k: int, groups: int) -> tuple[Tensor, Tensor]:
    """Ragged version of :func:`kth_in_rows`: candidate ``j`` belongs to query ``group[j]``."""
    o = torch.sort(idx, stable=True).indices
    group, dist, idx = group[o], dist[o], idx[o]
    o = torch.sort(dist, stable=True).indices
    group, dist, idx = group[o], dist[o], idx[o]
    o = torch.sort(group, stable=True).indices
    group, dist, idx = group[o], dist[o], idx[o]
    counts = torch.bincount(group, minlength=groups)
    if bool((counts < k).any()):
        raise ValueError("nearest-neighbour query: some query keys are not finite (NaN/inf), no neighbour exists")
    start = torch.cumsum(counts, 0) - counts
    pos = start + (k - 1)
    return dist[pos], idx[pos]


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"nearest-neighbour query: k must be in [1, {n}] (the number of indexed rows), got {k}")


class KNNIndex:
    """Common interface: ``query(queries (B, D), k) -> (indices (B,) int64, exact squared distances (B,))``,
    both on the device of ``queries``."""

    backend = "none"

    def __init__(self, keys: Tensor) -> None:
        if keys.dim() != 2 or keys.shape[0] == 0:
            raise ValueError(
                f"nearest-neighbour index: keys must be a non-empty (N, D) matrix, got {tuple(keys.shape)}"
            )
        if keys.dtype != torch.float32:
            raise ValueError(f"nearest-neighbour index: keys must be float32, got {keys.dtype}")
        if not bool(torch.isfinite(keys).all()):
            raise ValueError("nearest-neighbour index: keys contain NaN/inf")
        self.num_rows, self.dim = int(keys.shape[0]), int(keys.shape[1])

    def query(self, queries: Tensor, k: int = 1, upper_bound: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Indices (on the queries' device) and exact squared distances of each query's k-th neighbour.

        ``upper_bound`` (B,) is an optional claimed bound on each k-th neighbour distance (a search hint)."""
        raise NotImplementedError

    def _check_queries(self, queries: Tensor, k: int) -> None:
        _check_k(k, self.num_rows)
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"nearest-neighbour query: expected (B, {self.dim}) keys, got {tuple(queries.shape)}")


class TreeIndex(KNNIndex):
    """CPU path: bounded ``cKDTree`` (k+1)-NN searches with a no-tie certificate (see the module docstring)."""

    backend = "tree"

    def __init__(self, keys: Tensor, workers: int | None = None, leafsize: int = 8) -> None:
        from scipy.spatial import cKDTree

        super().__init__(keys)
        self.keys = keys.detach().to("cpu").contiguous()
        self._keys_np = self.keys.numpy()
        self.workers = workers
        # sliding-midpoint splits (balanced_tree off) build 2-5x faster than median splits (1M x 23: ~1 s) and
        # searched as fast or faster on scripts/bench_knn.py's data, as did leaves of 8 rows rather than 10-16
        # (1M rows, 2026-12-03). The zero column carries each query's own bound (module docstring).
        padded = np.zeros((self.num_rows, self.dim + 1), dtype=np.float64)
        padded[:, : self.dim] = self._keys_np
        self.tree = cKDTree(padded, leafsize=leafsize, balanced_tree=False)

    def _search(self, q64: np.ndarray, kk: int, workers: int, bound: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """``kk``-NN search of the (B, D) queries: without ``bound``, plain distances; with one, each query pruned at
        its own bound in a single call (module docstring): augmented distances and ``(B, kk)`` indices (inf / N
        past the bound)."""
        lift = radius = None
        if bound is not None:
            radius = self._radius(bound)
            # each bound is loosened by 1e-10 R^2 (only the speed depends on it), so that a row at distance b_q
            # lies clearly inside R: its augmented distance plus the certificate's margin stays below R
            lift = np.sqrt(np.maximum(radius * radius * (1 - 1e-10) - bound * bound, 0.0))
        d, i = self.tree.query(self._lifted(q64, lift), k=[kk] if kk == 1 else kk,
                               distance_upper_bound=np.inf if radius is None else radius, workers=workers)
        return np.reshape(d, (-1, kk)), np.reshape(i, (-1, kk))

    @staticmethod
    def _lifted(q64: np.ndarray, lift: np.ndarray | None = None) -> np.ndarray:
        """The (B, D) queries with the tree's extra column appended: zero (plain distances) or each query's lift."""
        column = np.zeros((q64.shape[0], 1)) if lift is None else lift[:, None]
        return np.concatenate([q64, column], 1)

    def _kth_distance(self, q64: np.ndarray, k: int, workers: int) -> np.ndarray:
        """Each query's plain k-th neighbour distance (an unpruned k-NN search)."""
        return self._search(q64, k, workers)[0][:, k - 1]

    @staticmethod
    def _radius(bound: np.ndarray) -> float:
        """The common search radius R of a call: the largest bound, loosened by 1e-11 relative (and 1e-20 absolute,
        so that an all-zero bound, exact matches, still certifies)."""
        return float(bound.max()) * (1 + 1e-11) + 1e-20

    def query(self, queries: Tensor, k: int = 1, upper_bound: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``upper_bound`` (optional, (B,)): a claimed bound on each query's k-th neighbour *distance*; it only
        prunes the search (a wrong claim costs a second search, never a wrong answer)."""
        self._check_queries(queries, k)
        device = queries.device
        q32 = queries.detach().to("cpu", torch.float32)
        q64 = q32.numpy().astype(np.float64)
        if not np.isfinite(q64).all():
            raise ValueError("nearest-neighbour query: some query keys are not finite (NaN/inf)")
        b = q64.shape[0]
        if b == 0:
            return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=torch.float64, device=device)
        workers = self.workers or torch.get_num_threads()
        if upper_bound is None:
            bound = np.full(b, np.inf)
        else:
            bound = upper_bound.detach().to("cpu", torch.float64).numpy().reshape(b)
            usable = np.isfinite(bound) & (bound >= 0)
            positive = usable & (bound > 0)
            if positive.any():  # one call shares the radius R = the largest bound: a bound 1e4x the batch's
                # median would lift the others so far that float64 hides their distances (no pruning, no certificate)
                usable &= bound <= 1e4 * float(np.median(bound[positive]))
            # a useless hint: no pruning (a plain k-NN search first); the others are loosened by 1e-6 relative,
            # so that a bound computed in float32 (off by ~1e-7 relative) still holds: a bound that fails costs
            # a second search
            bound = np.where(usable, bound * (1 + 1e-6), np.inf)
        out_i = self._certified(q32, q64, k, bound, workers)
        sq = exact_sq_dist(self._keys_np[out_i], q32.numpy())
        return torch.from_numpy(out_i).to(device), torch.from_numpy(sq).to(device)

    def _certified(self, q32: Tensor, q64: np.ndarray, k: int, bound: np.ndarray, workers: int) -> np.ndarray:
        """The k-th neighbour by a bounded (k+1)-NN search that shows the (k+1)-th is strictly farther, with an
        exact ranking of every row within the k-th distance where it does not (ties, or a wrong bound)."""
        b = q64.shape[0]
        out_i = np.empty(b, dtype=np.int64)
        if not np.isfinite(bound).all():  # no (usable) bound: the k-th distance from a plain k-NN search
            free = ~np.isfinite(bound)
            bound = bound.copy()
            bound[free] = self._kth_distance(q64[free], k, workers)
        kk = min(k + 1, self.num_rows)
        dist, idx = self._search(q64, kk, workers, bound)
        # the k-th is well inside the searched radius, so any row tied with it (up to the tree's float64
        # rounding, ~(D + 1) 1e-16 relative on the squares) was searched too; inf (fewer than k rows within a
        # wrong bound) fails. The margin is relative to the augmented distance, the same for all rows of a query.
        reach = dist[:, k - 1] * (1 + 1e-12) + 1e-30
        good = reach < self._radius(bound)
        if kk > k:
            good &= dist[:, k] > reach  # the (k+1)-th is strictly farther (inf: nothing more within the bound)
        sel = np.flatnonzero(good)
        if k == 1:
            out_i[sel] = idx[sel, 0]
        elif sel.size:  # the k nearest are known as a set; the k-th in (distance, index) order is the answer
            rows = torch.from_numpy(idx[sel, :k])
            exact = exact_sq_dist(self.keys[rows], q32[torch.from_numpy(sel)].unsqueeze(1))
            out_i[sel] = kth_in_rows(exact, rows, k)[1].numpy()
        rest = np.flatnonzero(~good)
        if rest.size:  # exact ties at the k-th distance (e.g. duplicated rows) or a wrong upper_bound
            radius = self._kth_distance(q64[rest], k, workers)
            hits = self.tree.query_ball_point(self._lifted(q64[rest]), radius * (1 + 4e-9) + 1e-30, workers=workers,
                                              return_sorted=False)
            counts = torch.tensor([len(h) for h in hits], dtype=torch.int64)
            rows = torch.from_numpy(np.concatenate([np.asarray(h, dtype=np.int64) for h in hits]))
            group = torch.repeat_interleave(torch.arange(rest.size), counts)
            exact = exact_sq_dist(self.keys[rows], q32[torch.from_numpy(rest)][group])
            out_i[rest] = _kth_in_groups(group, exact, rows, k, rest.size)[1].numpy()
        return out_i


@contextlib.contextmanager
def _ieee_matmul() -> Iterator[None]:
    """float32 matmuls at full precision (no TF32/bf16) inside the block; the error bound assumes it."""
    previous = torch.get_float32_matmul_precision()
    if previous != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if previous != "highest":
            torch.set_float32_matmul_precision(previous)


class BruteForceIndex(KNNIndex):
    """Device path: chunked matmul distances, exact re-ranking, error-bound certificate and fix-up."""

    backend = "brute"

    def __init__(
        self,
        keys: Tensor,
        device: torch.device | str | None = None,
        chunk_rows: int = 0,
        candidates: int = 16,
        precision: str = "float32",
    ) -> None:
        super().__init__(keys)
        if precision not in ("float32", "float64"):
            raise ValueError(f"nearest-neighbour index: precision must be float32 or float64, got {precision!r}")
        if candidates < 1:
            raise ValueError(f"nearest-neighbour index: candidates must be >= 1, got {candidates}")
        self.device = torch.device(device) if device is not None else keys.device
        self.dtype = torch.float32 if precision == "float32" else torch.float64
        self.candidates = int(candidates)
        if chunk_rows <= 0:  # (B=256) x chunk distances: 256 MB of float32 on a GPU; 4 MB on a CPU, where the two
            # argmin passes read the block while it is in cache (1M x 23, 1 thread: 2.2x faster than 16 MB blocks)
            chunk_rows = 1 << 18 if self.device.type == "cuda" else 1 << 12
        self.chunk_rows = int(chunk_rows)
        self.keys = keys.detach().to(self.device, torch.float32).contiguous()
        mean = self.keys.to(torch.float64).mean(0)
        self.center = mean.to(self.dtype)
        centered = self.keys.to(self.dtype) - self.center
        self.centered = centered
        self.sq_norms = (centered * centered).sum(1)
        self.max_norm = float(self.sq_norms.max().to(torch.float64).sqrt())  # once, at build
        unit = 2.0**-24 if self.dtype == torch.float32 else 2.0**-53
        # |approx - exact| <= gamma_D (|x| + |q|)^2 for the three-term formula (dot product, two norms, two
        # additions; Higham's gamma_n = n u / (1 - n u)); a factor 4 covers the centring roundings too.
        self.err_coef = 4.0 * (self.dim + 8) * unit

    def _approx(self, qc: Tensor, q_sq: Tensor, start: int, stop: int) -> Tensor:
        x = self.centered[start:stop]
        return torch.addmm(self.sq_norms[start:stop].unsqueeze(0), qc, x.t(), beta=1.0, alpha=-2.0) + q_sq.unsqueeze(1)

    def query(self, queries: Tensor, k: int = 1, upper_bound: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check_queries(queries, k)  # upper_bound is not needed: every row is scanned
        device = queries.device
        q32 = queries.detach().to(self.device, torch.float32)
        b, n = q32.shape[0], self.num_rows
        qc = q32.to(self.dtype) - self.center
        q_sq = (qc * qc).sum(1)
        if k == 1 and self.device.type == "cpu" and n > 1:
            i_1, d_1 = self._nearest_cpu(q32, qc, q_sq)
            return i_1.to(device), d_1.to(device)
        cand = min(max(self.candidates, k + 1), n)
        with _ieee_matmul():
            best_d = torch.empty(b, 0, dtype=self.dtype, device=self.device)
            best_i = torch.empty(b, 0, dtype=torch.int64, device=self.device)
            for start in range(0, n, self.chunk_rows):
                stop = min(start + self.chunk_rows, n)
                approx = self._approx(qc, q_sq, start, stop)
                vals, idx = torch.topk(approx, min(cand, stop - start), dim=1, largest=False, sorted=False)
                best_d = torch.cat([best_d, vals], 1)
                best_i = torch.cat([best_i, idx + start], 1)
                if best_d.shape[1] > cand:
                    vals, pos = torch.topk(best_d, cand, dim=1, largest=False, sorted=False)
                    best_d, best_i = vals, best_i.gather(1, pos)
            exact = exact_sq_dist(self.keys[best_i], q32.unsqueeze(1))
            d_k, i_k = kth_in_rows(exact, best_i, k)
            if cand >= n:
                return i_k.to(device), d_k.to(device)
            # every row outside the candidates has approx >= the K-th approx, so exact >= that - err
            err = self.err_coef * (self.max_norm + q_sq.to(torch.float64).sqrt()).square()
            kth_approx = best_d.max(dim=1).values.to(torch.float64)
            certified = d_k < kth_approx - err
            if not bool(certified.all()):  # the one host sync; only here do we need to know
                bad = (~certified).nonzero().squeeze(1)
                d_bad, i_bad = self._recheck(q32[bad], qc[bad], q_sq[bad], d_k[bad] + 2 * err[bad], k)
                d_k = d_k.index_put((bad,), d_bad)
                i_k = i_k.index_put((bad,), i_bad)
        return i_k.to(device), d_k.to(device)

    def _nearest_cpu(self, q32: Tensor, qc: Tensor, q_sq: Tensor) -> tuple[Tensor, Tensor]:
        """``k = 1`` on the CPU: per chunk only the two smallest approximate distances per query (numpy's SIMD
        ``argmin`` twice; a top-K is ~5x slower on the CPU), written into one reused buffer.

        The candidate is the approximate argmin; every other row's approximate distance is >= ``second``, the
        smaller of the winning chunk's second minimum and the other chunks' minima. The answer is certified when
        ``second - err`` exceeds the candidate's exact distance (every other row is then strictly farther);
        other queries get the exact re-check of :meth:`_recheck`."""
        b, n, c = q32.shape[0], self.num_rows, self.chunk_rows
        chunks = -(-n // c)
        buf = torch.empty(b, min(c, n), dtype=self.dtype)
        view = buf.numpy()
        mins = np.empty((2, b, chunks), dtype=view.dtype)
        args = np.empty((b, chunks), dtype=np.int64)
        rows = np.arange(b)
        with _ieee_matmul():
            for j in range(chunks):
                start, stop = j * c, min((j + 1) * c, n)
                out = buf[:, : stop - start]
                torch.addmm(self.sq_norms[start:stop].unsqueeze(0), qc, self.centered[start:stop].t(),
                            beta=1.0, alpha=-2.0, out=out)
                v = view[:, : stop - start]
                i = v.argmin(1)
                args[:, j] = i + start
                mins[0, :, j] = v[rows, i]
                if stop - start > 1:
                    v[rows, i] = np.inf
                    mins[1, :, j] = v[rows, v.argmin(1)]
                else:
                    mins[1, :, j] = np.inf
        win = mins[0].argmin(1)
        cand = torch.from_numpy(args[rows, win])
        second = mins[1, rows, win].astype(np.float64)
        if chunks > 1:
            mins[0, rows, win] = np.inf
            second = np.minimum(second, mins[0].min(1))
        d_c = exact_sq_dist(self.keys[cand], q32)
        q_sq64 = q_sq.to(torch.float64)
        err = self.err_coef * (self.max_norm + q_sq64.sqrt()).square()
        certified = d_c < torch.from_numpy(second) + q_sq64 - err
        if not bool(certified.all()):
            bad = (~certified).nonzero().squeeze(1)
            d_bad, i_bad = self._recheck(q32[bad], qc[bad], q_sq[bad], d_c[bad] + 2 * err[bad], 1)
            d_c = d_c.index_put((bad,), d_bad)
            cand = cand.index_put((bad,), i_bad)
        return cand, d_c

    def _recheck(self, q32: Tensor, qc: Tensor, q_sq: Tensor, threshold: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact k-th neighbour among every row whose approximate distance is <= ``threshold``.

        Any row at exact distance <= the candidate's has approx <= candidate + err < threshold (= candidate +
        2 err, which stays above candidate + err after rounding to the matmul precision since the candidate
        is <= (max|x| + |q|)^2), so the k nearest rows are all re-checked."""
        groups, rows = [], []
        thr = threshold.to(self.dtype).unsqueeze(1)
        for start in range(0, self.num_rows, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.num_rows)
            hit = (self._approx(qc, q_sq, start, stop) <= thr).nonzero()
            groups.append(hit[:, 0])
            rows.append(hit[:, 1] + start)
        group, idx = torch.cat(groups), torch.cat(rows)
        dist = exact_sq_dist(self.keys[idx], q32[group])
        return _kth_in_groups(group, dist, idx, k, q32.shape[0])


class AutoIndex(KNNIndex):
    """CPU default: the tree and the brute force over the same keys, each query answered by whichever is faster now.

    Both give the same answer (the definition above), so the choice only changes the speed, never a run. The brute
    force's cost is fixed (every row, every query) and measured once at build on dataset keys; the tree's grows with
    the distance between the queries and the data (PRDC: as pi(s) leaves the dataset), so it is timed on every call
    it serves. While the tree is faster it serves; once its running time exceeds the brute force's, the brute force
    serves and the tree is re-tried after ``probe`` calls, doubling the wait (up to 256) each time it is still
    slower, so that a probe costs at most a few percent."""

    backend = "auto"

    def __init__(self, tree: "TreeIndex", brute: "BruteForceIndex", probe_keys: Tensor) -> None:
        super().__init__(brute.keys[:1])
        self.num_rows, self.dim = tree.num_rows, tree.dim
        self.tree, self.brute = tree, brute
        start = time.perf_counter()
        brute.query(probe_keys)
        first = time.perf_counter() - start
        start = time.perf_counter()
        brute.query(probe_keys)
        self.brute_time = min(first, time.perf_counter() - start)  # per call of probe_keys.shape[0] queries
        self.probe_rows = int(probe_keys.shape[0])
        self.tree_time: float | None = None
        self.using = "tree"
        self.wait, self.calls_since_probe = 4, 0
        self.served = {"tree": 0, "brute": 0}

    def _brute_seconds(self, b: int) -> float:
        return self.brute_time * b / self.probe_rows

    def query(self, queries: Tensor, k: int = 1, upper_bound: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b = max(int(queries.shape[0]), 1)
        if self.using == "brute" and self.calls_since_probe < self.wait:
            self.calls_since_probe += 1
            self.served["brute"] += 1
            start = time.perf_counter()
            out = self.brute.query(queries, k, upper_bound)
            # its cost is fixed by the data size, so the latest call is the best estimate (the machine's load moves)
            self.brute_time = (time.perf_counter() - start) * self.probe_rows / b
            if self.tree_time is not None and self._brute_seconds(b) > 1.1 * self.tree_time:
                self.using, self.wait = "tree", 4  # the brute force got slower than the tree last was
            return out
        start = time.perf_counter()
        out = self.tree.query(queries, k, upper_bound)
        elapsed = time.perf_counter() - start
        self.served["tree"] += 1
        probing = self.using == "brute"
        self.tree_time = elapsed if (self.tree_time is None or probing) else 0.7 * self.tree_time + 0.3 * elapsed
        slower = self.tree_time > 1.1 * self._brute_seconds(b)
        if probing:
            self.calls_since_probe = 0
            if slower:
                self.wait = min(2 * self.wait, 256)
            else:
                self.using, self.wait = "tree", 4
        elif slower:
            self.using, self.calls_since_probe = "brute", 0
        return out


def build_index(
    keys: Tensor,
    backend: str = "auto",
    device: torch.device | str | None = None,
    workers: int | None = None,
    chunk_rows: int = 0,
    candidates: int = 16,
    precision: str = "float32",
) -> KNNIndex:
    """Exact index over ``keys`` (float32, (N, D)): ``auto`` is the brute-force path on CUDA and, on the CPU, an
    :class:`AutoIndex` over both paths (the tree alone for small key sets, where it always wins)."""
    if backend not in BACKENDS:
        raise ValueError(f"nearest-neighbour backend={backend!r} is unknown; choose one of {', '.join(BACKENDS)}")
    dev = torch.device(device) if device is not None else keys.device
    if backend == "auto":
        if dev.type == "cuda":
            backend = "brute"
        elif keys.shape[0] < AUTO_MIN_ROWS:
            backend = "tree"
        else:
            tree = TreeIndex(keys, workers=workers)
            brute = BruteForceIndex(keys, device=dev, chunk_rows=chunk_rows, candidates=candidates, precision=precision)
            probe = keys[torch.randint(0, keys.shape[0], (256,), generator=torch.Generator().manual_seed(0))]
            return AutoIndex(tree, brute, probe.to(dev) + 0.5)
    if backend == "tree":
        return TreeIndex(keys, workers=workers)
    return BruteForceIndex(keys, device=dev, chunk_rows=chunk_rows, candidates=candidates, precision=precision)


def brute_force_reference(keys: np.ndarray, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Slow float64 reference of the definition above (tests and benchmarks; O(B N D) memory-light loop)."""
    keys_t = torch.as_tensor(keys, dtype=torch.float32)
    out_i, out_d = [], []
    for q in torch.as_tensor(queries, dtype=torch.float32):
        d = exact_sq_dist(keys_t, q)
        order = np.lexsort((np.arange(len(d)), d.numpy()))
        out_i.append(order[k - 1])
        out_d.append(float(d[order[k - 1]]))
    return np.asarray(out_i, dtype=np.int64), np.asarray(out_d)

