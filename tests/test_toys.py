"""The fast toy path (vhbb.stats.toys): the same toys and fits as the diagnostics' loop."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vhbb.fit import diagnostics as dg
from vhbb.stats import likelihood as lk
from vhbb.stats import toys as st


@pytest.mark.parametrize("stat", [None, "profile"])
def test_toys_are_the_loop_toys_and_fits(stat):
    model, _ = lk.toy_model(4, 4, stat=stat, jes_asymmetry=0.02)
    x = dg.truth_point(model, {"mu": 1.0})
    n = 12
    seeds = np.random.SeedSequence(7).spawn(n)
    toys = st.generate_toys(model, x, seeds)
    for j, seed in enumerate(seeds):
        np.testing.assert_array_equal(
            toys[j], dg.generate_toy(model, x, np.random.default_rng(seed))
        )
    fits = st.fit_toys(model, toys)
    loop = dg.run_toys(model, x, n, 7, params=list(model.names))
    np.testing.assert_allclose(fits.values, loop.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fits.errors, loop.errors, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fits.nll, loop.nll, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(st.accepted(model, fits, edm_accept=dg.EDM_ACCEPT), loop.valid)
    for j in range(n):  # and each is lk.fit's result
        res = lk.fit(model, toys[j], require_valid=False)
        np.testing.assert_allclose(fits.values[j], res.values, rtol=0, atol=1e-6)


def test_workers_do_not_change_the_fits():
    model, _ = lk.toy_model(3, 3, stat="profile")
    x = dg.truth_point(model, {"mu": 0.5})
    seeds = np.random.SeedSequence(3).spawn(9)
    one = st.run_toys(model, x, seeds)
    two = st.run_toys(model, x, seeds, workers=2)
    np.testing.assert_array_equal(one.values, two.values)
    np.testing.assert_array_equal(one.valid, two.valid)


def test_goodness_of_fit_toys_without_hesse():
    model, asimov = lk.toy_model(3, 3, stat="profile")
    best = lk.fit(model, asimov)
    start = replace(model, init=best.values.copy())
    seeds = np.random.SeedSequence(11).spawn(6)
    toys = st.poisson_toys(asimov, seeds)
    for j, seed in enumerate(seeds):
        np.testing.assert_array_equal(toys[j], np.random.default_rng(seed).poisson(asimov))
    fits = st.fit_toys(start, toys, hesse=False)
    for j in range(len(toys)):
        res = lk.fit(start, toys[j], hesse=False, require_valid=False)
        assert fits.nll[j] == pytest.approx(res.nll, abs=1e-9)
        assert bool(fits.valid[j]) == res.status.valid


def test_a_failing_toy_is_a_nan_row():
    model, asimov = lk.toy_model(3, 3)
    toys = np.stack([asimov, np.full_like(asimov, np.nan)])
    fits = st.fit_toys(model, toys)
    assert not fits.failed[0] and fits.failed[1]
    assert np.all(np.isnan(fits.values[1])) and np.isnan(fits.nll[1])
    assert list(st.accepted(model, fits, edm_accept=0.02)) == [True, False]
