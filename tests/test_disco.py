"""vhbb.stats.disco: DisCo (weighted dCor^2) reference and tiled forms against dcor and each other.

Needs torch and dcor: skips without them, fails under CI=true (conftest.require_module).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_module

TOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    return require_module("torch", "vhbb.stats.disco is a torch loss term")


@pytest.fixture(scope="module")
def dcor():
    return require_module("dcor", "reference distance correlation")


@pytest.fixture(scope="module")
def disco(torch):
    from vhbb.stats import disco

    return disco


def _sample(n, seed, kind="nonlinear"):
    rng = np.random.default_rng(seed)
    x = rng.gamma(3.0, 30.0, size=n)  # mass-like
    if kind == "nonlinear":
        y = 1 / (1 + np.exp(-(((x - 100) / 40) ** 2) + rng.normal(size=n)))
    elif kind == "independent":
        y = rng.random(n)
    else:  # ties in both variables
        x = np.round(x / 20.0)
        y = np.round(rng.random(n) + 0.002 * x, 1)
    return x, y


def _t(torch, a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("kind", ["nonlinear", "independent", "ties"])
@pytest.mark.parametrize("n", [2, 57, 640])
def test_unit_weights_match_dcor(torch, dcor, disco, n, kind):
    x, y = _sample(n, n, kind)
    ref = dcor.distance_correlation_sqr(x, y, method="naive")
    got_ref = float(disco.distance_corr_sq_reference(_t(torch, x), _t(torch, y)))
    got_tiled = float(disco.distance_corr_sq_tiled(_t(torch, x), _t(torch, y), tile_size=37))
    assert abs(got_ref - ref) < TOL
    assert abs(got_tiled - ref) < TOL


@pytest.mark.parametrize("kind", ["nonlinear", "independent", "ties"])
@pytest.mark.parametrize("n", [2, 57, 640])
def test_values_match_dcor_and_the_tiled_form_per_weighting(torch, dcor, disco, n, kind):
    """The no-gradient form (sorted row means, one sweep for all weightings): unit weights equal
    dcor; each column of a weight matrix equals the tiled form with that weighting."""
    x, y = _sample(n, n, kind)
    ref = dcor.distance_correlation_sqr(x, y, method="naive")
    ones = torch.ones(n, dtype=torch.float64)
    assert (
        abs(float(disco.distance_corr_sq_values(_t(torch, x), _t(torch, y), ones)[0]) - ref) < TOL
    )
    rng = np.random.default_rng(n + 1)
    w = np.stack([rng.gamma(2.0, 0.5, n), rng.poisson(1.0, n) + 0.0, np.ones(n)], axis=1)
    got = disco.distance_corr_sq_values(_t(torch, x), _t(torch, y), _t(torch, w))
    for k in range(3):
        col = _t(torch, w[:, k])
        if w[:, k].sum() <= 0:
            assert np.isnan(float(got[k]))
            continue
        want = float(disco.distance_corr_sq_tiled(_t(torch, x), _t(torch, y), col))
        assert abs(float(got[k]) - want) < TOL


def test_values_of_a_small_correlation_keep_their_digits(torch, disco):
    """Independent variables at N = 4000 (dCor^2 ~ 1e-3, where sum p p a b - 2 sum p r s + abar
    bbar cancels most): the algebraic form equals the centred one to 1e-9 relative."""
    x, y = _sample(4000, 3, "independent")
    w = np.random.default_rng(4).exponential(size=4000)
    want = float(disco.distance_corr_sq_tiled(_t(torch, x), _t(torch, y), _t(torch, w)))
    got = float(disco.distance_corr_sq_values(_t(torch, x), _t(torch, y), _t(torch, w))[0])
    assert want < 2e-3 and abs(got - want) < 1e-9 * want
    const = disco.distance_corr_sq_values(_t(torch, np.ones(5)), _t(torch, x[:5]), _t(torch, w[:5]))
    assert float(const[0]) == 0.0


@pytest.mark.parametrize("n", [50, 400])
def test_integer_weights_equal_repeated_events(torch, dcor, disco, n):
    x, y = _sample(n, 3 + n)
    w = np.random.default_rng(n).integers(1, 4, size=n)
    ref = dcor.distance_correlation_sqr(np.repeat(x, w), np.repeat(y, w), method="naive")
    wt = _t(torch, w.astype(float))
    assert abs(float(disco.distance_corr_sq_reference(_t(torch, x), _t(torch, y), wt)) - ref) < TOL
    for tile in (1, 16, n):
        tiled = disco.distance_corr_sq_tiled(_t(torch, x), _t(torch, y), wt, tile_size=tile)
        assert abs(float(tiled) - ref) < TOL
    # the weights' overall scale does not matter (normalised to mean 1 internally)
    scaled = disco.distance_corr_sq_reference(_t(torch, x), _t(torch, y), wt * 0.013)
    assert abs(float(scaled) - ref) < TOL


def test_matches_numpy_reference(torch, disco):
    from vhbb.stats.metrics import distance_correlation_sq

    x, y = _sample(300, 1)
    w = np.random.default_rng(2).gamma(2.0, 0.5, size=300)  # non-integer weights
    ref = distance_correlation_sq(x, y, w)
    got = disco.distance_corr_sq(_t(torch, x), _t(torch, y), _t(torch, w))
    assert abs(float(got) - ref) < TOL


def _grads(torch, fn, x, y, w):
    xt, yt = _t(torch, x, True), _t(torch, y, True)
    out = fn(xt, yt, None if w is None else _t(torch, w))
    gx, gy = torch.autograd.grad(out, (xt, yt))
    return float(out.detach()), gx.numpy(), gy.numpy()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["nonlinear", "ties"])
def test_tiled_value_and_gradient_equal_reference(torch, disco, weighted, kind):
    n = 513
    x, y = _sample(n, 5, kind)
    w = np.random.default_rng(6).gamma(2.0, 0.5, size=n) if weighted else None
    v_ref, gx_ref, gy_ref = _grads(torch, disco.distance_corr_sq_reference, x, y, w)
    for tile in (1, 64, 500, 1000):

        def tiled(a, b, c, tile=tile):
            return disco.distance_corr_sq_tiled(a, b, c, tile_size=tile)

        v, gx, gy = _grads(torch, tiled, x, y, w)
        assert abs(v - v_ref) < TOL
        np.testing.assert_allclose(gx, gx_ref, rtol=0, atol=TOL * np.abs(gx_ref).max())
        np.testing.assert_allclose(gy, gy_ref, rtol=0, atol=TOL * np.abs(gy_ref).max())


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["nonlinear", "independent", "ties"])
def test_one_sided_form_equals_reference(torch, disco, weighted, kind):
    """x without gradient (m_jj in DisCo): the one-sweep form, value and gradient in y, float64
    and float32 inputs (the training's), ties included."""
    n = 701
    x, y = _sample(n, 15, kind)
    w = np.random.default_rng(16).gamma(2.0, 0.5, size=n) if weighted else None
    wt = None if w is None else _t(torch, w)
    yr = _t(torch, y, True)
    ref = disco.distance_corr_sq_reference(_t(torch, x), yr, wt)
    (g_ref,) = torch.autograd.grad(ref, yr)
    for tile in (1, 64, 1000):
        yt = _t(torch, y, True)
        got = disco.distance_corr_sq_tiled(_t(torch, x), yt, wt, tile_size=tile)
        assert "OneSided" in type(got.grad_fn).__name__
        (g,) = torch.autograd.grad(got, yt)
        assert abs(float(got) - float(ref)) < TOL
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=TOL * float(g_ref.abs().max()))
    # float32 inputs: against the reference of the same (rounded) values, whose near-ties in y
    # become ties
    x32, y32 = (torch.tensor(a, dtype=torch.float32) for a in (x, y))
    w32 = None if w is None else torch.tensor(w, dtype=torch.float32)
    yr = y32.double().requires_grad_(True)
    ref = disco.distance_corr_sq_reference(x32.double(), yr, None if w32 is None else w32.double())
    (g_ref,) = torch.autograd.grad(ref, yr)
    y32.requires_grad_(True)
    got = disco.distance_corr_sq_tiled(x32, y32, w32)
    (g,) = torch.autograd.grad(got, y32)
    assert got.dtype == g.dtype == torch.float32
    assert float(got) == pytest.approx(float(ref), rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-5 * float(g_ref.abs().max()))
    assert torch.autograd.gradcheck(
        lambda b: disco.distance_corr_sq_tiled(_t(torch, x[:40]), b, None, tile_size=7),
        (_t(torch, y[:40], True),),
    )


def test_tiled_gradcheck(torch, disco):
    rng = np.random.default_rng(7)
    x = _t(torch, rng.normal(size=30), True)
    y = _t(torch, rng.normal(size=30) + x.detach().numpy() ** 2, True)
    w = _t(torch, rng.gamma(2.0, 0.5, size=30))
    assert torch.autograd.gradcheck(
        lambda a, b: disco.distance_corr_sq_tiled(a, b, w, tile_size=7), (x, y)
    )


def test_dispatch(torch, disco):
    x, y = _sample(300, 8)
    xt, yt = _t(torch, x, True), _t(torch, y, True)
    small = disco.distance_corr_sq(xt, yt, threshold=300)
    large = disco.distance_corr_sq(xt, yt, threshold=299, tile_size=50)
    assert "Tiled" not in type(small.grad_fn).__name__
    assert "Tiled" in type(large.grad_fn).__name__
    assert abs(float(small.detach()) - float(large.detach())) < TOL


def test_degenerate_and_invalid_inputs(torch, disco):
    x = _t(torch, np.arange(20.0), True)
    const = _t(torch, np.full(20, 3.0), True)
    for fn in (disco.distance_corr_sq_reference, disco.distance_corr_sq_tiled):
        out = fn(x, const)
        assert float(out.detach()) == 0.0
        gx, gc = torch.autograd.grad(out, (x, const))
        assert torch.all(gx == 0) and torch.all(gc == 0)
    with pytest.raises(ValueError, match="weights"):
        disco.distance_corr_sq(x, x, torch.zeros(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="constants"):
        disco.distance_corr_sq_tiled(x, x, torch.ones(20, dtype=torch.float64, requires_grad=True))
    with pytest.raises(ValueError, match="entries"):
        disco.distance_corr_sq(x, x[:10])


def test_float32_close_to_float64(torch, disco):
    x, y = _sample(3000, 9)
    ref = float(disco.distance_corr_sq_tiled(_t(torch, x), _t(torch, y)))
    xf = torch.tensor(x, dtype=torch.float32)
    yf = torch.tensor(y, dtype=torch.float32)
    got = disco.distance_corr_sq(xf, yf)  # tiled (above the default threshold), in float32
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("n", [1, 2, 3, 1024, 1025])
@pytest.mark.parametrize("kind", ["nonlinear", "ties"])
def test_pair_product_sums_equal_the_sum_over_the_pairs(torch, disco, n, kind):
    """The dominance-sum form of sum_ij p_i p_j |x_i - x_j| |y_i - y_j| (O(N log^2 N)) equals
    the explicit N x N sum, per weighting, at and beside powers of two, with ties and
    zero weights."""
    x, y = _sample(n, 7 + n, kind)
    rng = np.random.default_rng(n)
    w = np.stack([rng.poisson(1.0, n) + 0.0, rng.exponential(size=n)], axis=1)
    want = np.einsum(
        "ik,jk,ij->k", w, w, np.abs(x[:, None] - x[None, :]) * np.abs(y[:, None] - y[None, :])
    )
    got = disco._pair_product_sums(_t(torch, x), _t(torch, y), _t(torch, w)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(want).max()))
