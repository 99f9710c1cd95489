"""Exact nearest-neighbour index (rlreg/data/knn.py): the same neighbour as scipy's KDTree on both paths,
explicit tie-break (lowest row index), and no float32 cancellation errors on the brute-force path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import KDTree

from rlreg.data.knn import (
    AUTO_MIN_ROWS,
    AutoIndex,
    BruteForceIndex,
    TreeIndex,
    brute_force_reference,
    build_index,
    exact_sq_dist,
)

# the brute-force path with its defaults, and with tiny chunks and candidate lists so that the chunk merge,
# the certificate and the exact fix-up all run on small data
PATHS = {
    "tree": dict(backend="tree"),
    "brute": dict(backend="brute"),
    "brute-small-chunks": dict(backend="brute", chunk_rows=97, candidates=2),
    # AutoIndex made to alternate: every call is served by the other path than the previous one
    "auto-alternating": dict(),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class AlternatingAuto(AutoIndex):
    """An AutoIndex whose timing says 'the other one is faster' after every call (tree -> brute -> tree ...)."""

    def query(self, queries, k=1, upper_bound=None):  # type: ignore[no-untyped-def]
        first = super().query(queries, k, upper_bound)
        second = super().query(queries, k, upper_bound)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        return first


def alternating(keys: torch.Tensor, device: str = "cpu") -> AutoIndex:
    auto = AlternatingAuto(TreeIndex(keys), BruteForceIndex(keys, device=device, chunk_rows=97), keys[:8])
    auto.brute_time = 0.0  # the tree is always "slower": it serves one call, then the brute force serves
    auto.wait = 1  # ... one call before the next probe, and never more (the probe doubles it: reset below)
    original = auto.query

    def query(queries, k=1, upper_bound=None):  # type: ignore[no-untyped-def]
        auto.wait, auto.brute_time = 1, 0.0
        return original(queries, k, upper_bound)

    auto.query = query  # type: ignore[method-assign]
    return auto


def index(keys: np.ndarray, path: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
    if path == "auto-alternating":
        return alternating(torch.as_tensor(keys), device)
    return build_index(torch.as_tensor(keys), device=device, **PATHS[path])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
def test_same_neighbour_as_scipy_kdtree_on_random_data(path: str, device: str) -> None:
    rng = np.random.default_rng(0)
    keys = np.concatenate([2.0 * rng.standard_normal((4000, 6)), rng.uniform(-1, 1, (4000, 3))], 1).astype(np.float32)
    queries = np.concatenate([2.0 * rng.standard_normal((300, 6)), rng.uniform(-1, 1, (300, 3))], 1).astype(np.float32)
    ref_d, ref_i = KDTree(keys).query(queries, k=1)
    idx, sq = index(keys, path, device).query(torch.as_tensor(queries, device=device))
    assert idx.device.type == device
    np.testing.assert_array_equal(idx.cpu().numpy(), ref_i)
    np.testing.assert_allclose(np.sqrt(sq.cpu().numpy()), ref_d, rtol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_kth_neighbour_matches_kdtree_k_list(path: str) -> None:
    # the official code calls KDTree.query(key, k=[k]): only the k-th neighbour
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((2000, 5)).astype(np.float32)
    queries = rng.standard_normal((100, 5)).astype(np.float32)
    for k in (2, 5):
        _, ref_i = KDTree(keys).query(queries, k=[k])
        idx, _ = index(keys, path).query(torch.as_tensor(queries), k=k)
        np.testing.assert_array_equal(idx.numpy(), ref_i[:, 0])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("k", [1, 3])
def test_exact_ties_go_to_the_lowest_row_index(path: str, k: int) -> None:
    """Integer keys: many duplicated rows, and half-integer queries equidistant from several distinct rows."""
    rng = np.random.default_rng(2)
    keys = rng.integers(-2, 3, (3000, 4)).astype(np.float32)
    queries = (rng.integers(-2, 3, (200, 4)) + rng.choice([0.0, 0.5], (200, 4))).astype(np.float32)
    idx, sq = index(keys, path).query(torch.as_tensor(queries), k=k)
    ref_i, ref_sq = brute_force_reference(keys, queries, k)
    np.testing.assert_array_equal(idx.numpy(), ref_i)
    np.testing.assert_array_equal(sq.numpy(), ref_sq)
    # the tie-break is real here, and it is the only thing that differs from scipy: KDTree reaches the same
    # distance, and its choice is one of the tied rows
    kd_d, kd_i = KDTree(keys).query(queries, k=[k])
    np.testing.assert_allclose(np.sqrt(ref_sq), kd_d[:, 0], rtol=1e-12)
    d_all = ((keys[None].astype(np.float64) - queries[:, None]) ** 2).sum(-1)
    tied = (d_all == ref_sq[:, None]).sum(1)
    assert (tied > 1).mean() > 0.5
    assert np.all(d_all[np.arange(len(queries)), kd_i[:, 0]] == ref_sq)
    # lowest index among the rows at the k-th distance that are not needed for ranks < k
    for q in range(len(queries)):
        at = np.flatnonzero(d_all[q] == ref_sq[q])
        closer = int((d_all[q] < ref_sq[q]).sum())
        assert ref_i[q] == at[k - 1 - closer]


def test_float32_cancellation_cannot_pick_a_wrong_neighbour() -> None:
    """Far from the data's mean, |x|^2 - 2 x.q + |q|^2 in float32 cannot separate neighbours 1e-3 apart;
    a plain float32 argmin gets it wrong, the certified brute force does not."""
    rng = np.random.default_rng(3)
    near = 3000.0 + rng.uniform(0, 0.01, (400, 3))
    far = -3000.0 + rng.standard_normal((400, 3))
    keys = np.concatenate([near, far]).astype(np.float32)
    queries = (3000.0 + rng.uniform(0, 0.01, (64, 3))).astype(np.float32)
    kd_d, _ = KDTree(keys).query(queries, k=1)
    ref_i, ref_sq = brute_force_reference(keys, queries)  # (float32 grid at 3000: some exact ties, see above)
    np.testing.assert_allclose(np.sqrt(ref_sq), kd_d, rtol=1e-12)
    k32, q32 = torch.as_tensor(keys), torch.as_tensor(queries)
    naive = ((k32 * k32).sum(1)[None] - 2 * q32 @ k32.T + (q32 * q32).sum(1)[:, None]).argmin(1).numpy()
    assert (exact_sq_dist(k32[naive], q32).numpy() > ref_sq).mean() > 0.5  # the hazard is real on this data
    for precision in ("float32", "float64"):
        idx, sq = BruteForceIndex(k32, chunk_rows=128, candidates=4, precision=precision).query(q32)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_array_equal(sq.numpy(), ref_sq)


def test_upper_bound_hint_never_changes_the_result() -> None:
    rng = np.random.default_rng(4)
    keys = rng.standard_normal((3000, 6)).astype(np.float32)
    keys[1500:1600] = keys[:100]  # duplicated rows: ties
    queries = torch.as_tensor(keys[rng.integers(0, 3000, 200)] + rng.normal(0, 0.3, (200, 6)).astype(np.float32))
    tree = TreeIndex(torch.as_tensor(keys))
    exact_i, exact_d = tree.query(queries)
    ref_i, _ = brute_force_reference(keys, queries.numpy())
    np.testing.assert_array_equal(exact_i.numpy(), ref_i)
    true = exact_d.sqrt()
    for bound in (true, true * 3, true * 0.5, torch.zeros(200), torch.full((200,), 100.0)):
        idx, sq = tree.query(queries, upper_bound=bound)
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        assert torch.equal(sq, exact_d)


def test_each_query_is_pruned_at_its_own_bound_in_one_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """One call mixes bounds over twelve orders of magnitude (exact matches with bound 0, true distances, loose and
    useless hints): every answer is exact, and the valid ones certify in the single lifted search (no ball query)."""
    rng = np.random.default_rng(5)
    keys = rng.standard_normal((4000, 5)).astype(np.float32)
    tree = TreeIndex(torch.as_tensor(keys))
    rows = rng.integers(0, 4000, 300)
    queries = keys[rows].copy()
    queries[100:] += rng.normal(0, 0.2, (200, 5)).astype(np.float32)
    ref_i, ref_d = brute_force_reference(keys, queries)
    bound = np.sqrt(ref_d) * np.geomspace(1.0, 1e4, 300)  # valid, from tight to 10^4 x loose
    bound[:100] = 0.0  # the query is a key: distance 0
    calls: list[int] = []

    class CountingTree:  # cKDTree's methods are read-only: wrap it
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.query = inner.query
            self._ball = inner.query_ball_point

        def query_ball_point(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(1)
            return self._ball(*args, **kwargs)

    def check(bound: np.ndarray, ref_i: np.ndarray, ref_d: np.ndarray, k: int = 1) -> None:
        idx, sq = tree.query(torch.as_tensor(queries), k=k, upper_bound=torch.as_tensor(bound))
        np.testing.assert_array_equal(idx.numpy(), ref_i)
        np.testing.assert_array_equal(sq.numpy(), ref_d)

    monkeypatch.setattr(tree, "tree", CountingTree(tree.tree))
    check(bound, ref_i, ref_d)
    assert not calls, "a valid bound must certify without the ball-query fallback"
    bound[::7] = np.nan  # useless hints (NaN, inf, absurd) are dropped per query, never trusted
    bound[1::7] = np.inf
    bound[2::7] = 1e200  # far above the batch's other bounds: searched without it
    bound[3::7] = 0.0  # wrong for the perturbed queries: they fall back to the exact ranking
    check(bound, ref_i, ref_d)
    ref3_i, ref3_d = brute_force_reference(keys, queries, k=3)  # the k-th neighbour under per-query bounds too
    check(np.sqrt(ref3_d) * np.geomspace(1.0, 1e3, 300), ref3_i, ref3_d, k=3)


@pytest.mark.parametrize("path", PATHS)
def test_an_empty_batch_of_queries_returns_empty_results(path: str) -> None:
    keys = np.random.default_rng(6).standard_normal((200, 3)).astype(np.float32)
    idx, sq = index(keys, path).query(torch.empty(0, 3), upper_bound=torch.empty(0))
    assert idx.shape == (0,) and idx.dtype == torch.int64 and sq.shape == (0,)


def test_exact_distance_is_a_fixed_order_float64_sum() -> None:
    rows = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.25]])
    q = torch.tensor([0.0, 0.0, 1.0])
    np.testing.assert_array_equal(exact_sq_dist(rows, q).numpy(), [1 + 4 + 4, 0.25 + 1 + 0.5625])
    assert exact_sq_dist(rows, q).dtype == torch.float64


def test_auto_backend_on_cpu_is_the_tree_for_small_data_and_both_for_large() -> None:
    keys = torch.randn(50, 4)
    assert isinstance(build_index(keys), TreeIndex)
    assert isinstance(build_index(keys, backend="brute"), BruteForceIndex)
    big = torch.randn(AUTO_MIN_ROWS, 3)
    auto = build_index(big)
    assert isinstance(auto, AutoIndex) and auto.brute_time > 0
    q = torch.randn(64, 3)
    for _ in range(3):
        idx, _ = auto.query(q)
        np.testing.assert_array_equal(idx.numpy(), brute_force_reference(big.numpy(), q.numpy())[0])


def test_auto_index_switches_to_the_faster_path_and_backs_off() -> None:
    rng = np.random.default_rng(5)
    keys = torch.as_tensor(rng.standard_normal((3000, 5)).astype(np.float32))
    q = torch.as_tensor(rng.standard_normal((40, 5)).astype(np.float32))
    auto = AutoIndex(TreeIndex(keys), BruteForceIndex(keys), keys[:8])
    ref = brute_force_reference(keys.numpy(), q.numpy())[0]
    cost = {"brute": 1e-12}  # the brute force "costs nothing": after one tree call it serves, probing the tree
    auto._brute_seconds = lambda b: cost["brute"]  # type: ignore[method-assign]
    for _ in range(40):  # after 4, 8, 16 calls (still slower each time)
        np.testing.assert_array_equal(auto.query(q)[0].numpy(), ref)
    assert auto.using == "brute" and auto.served == {"tree": 4, "brute": 36} and auto.wait == 32
    cost["brute"] = 1e3  # now the brute force "is slow": its next call hands back to the tree, which stays
    for _ in range(40):
        np.testing.assert_array_equal(auto.query(q)[0].numpy(), ref)
    assert auto.using == "tree" and auto.served == {"tree": 43, "brute": 37}


def test_bad_input_names_the_problem() -> None:
    keys = torch.randn(20, 4)
    with pytest.raises(ValueError, match="backend='kd'"):
        build_index(keys, backend="kd")
    with pytest.raises(ValueError, match="float32"):
        build_index(keys.double())
    with pytest.raises(ValueError, match="NaN"):
        build_index(torch.tensor([[0.0, float("nan")]]))
    for path in ("tree", "brute"):
        idx = build_index(keys, backend=path)
        with pytest.raises(ValueError, match=r"k must be in \[1, 20\]"):
            idx.query(torch.randn(3, 4), k=21)
        with pytest.raises(ValueError, match=r"\(B, 4\)"):
            idx.query(torch.randn(3, 5))
        with pytest.raises(ValueError, match="not finite"):
            idx.query(torch.tensor([[0.0, 0.0, float("nan"), 0.0]]))


def test_matmul_precision_is_restored() -> None:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        BruteForceIndex(torch.randn(100, 3), candidates=2).query(torch.randn(5, 3))
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
