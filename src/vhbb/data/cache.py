"""Ntuple caching: read ROOT files with uproot, derive analysis variables, select, assign regions.

Two input layouts are supported through the config, with no code change:

* ``flat``: the toy trees (one branch per quantity: ``Jet1_pt``, ``AddJet2_eta``, ``MET_pt``,
  JES variations as ``<branch>_jes_<source>Up/Down``, the sources found in the branch names:
  :func:`flat_jes_sources`; MC branches ``weight_<name>Up/Down``, ratios to the nominal weight,
  are cached as they are: :func:`flat_weight_variations`);
* ``nanoaod``: CMS NanoAOD (jagged ``Jet_*`` collections).  The two b-jet candidates are the
  two selected jets with the highest b-tag score; additional jets are the other selected jets.
  JES variations (per source of the layout's ``jes_sources``) are made by scaling every jet
  with the parametrised uncertainty and propagating the change to MET (:func:`scale_jes`), or,
  with the layout's ``jes: {from: branches}``, read from branches such as NanoAOD-tools'
  ``Jet_pt_jesAbsoluteUp`` (:func:`branch_jes`; a custom layout declares the same).

Both layouts are first brought to one standard structure (:class:`JetEvent`), from which
:func:`derive` computes the same columns; regions are then evaluated per JES variation with the
safe expression evaluator, so events migrate between regions under JES shifts.  The varied
columns of JES source ``s`` are ``<column>_jes_<s>Up/Down`` and ``region_jes_<s>Up/Down``
(:mod:`vhbb.data.jes`); the parquet metadata lists the sources (``jes_sources``, MC; data: none).
Every JES variation costs its varied columns (:data:`VARIED_COLUMNS` and a region column): the
cache grows by 11 columns per variation, 2 per source.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vhbb.core.errors import ConfigError, DataError, InputError, VhbbError
from vhbb.core.io import atomic_path
from vhbb.data import expressions
from vhbb.data import jes as jesmod

log = logging.getLogger(__name__)

KEY_COLUMNS = ("run", "luminosityBlock", "event")
NO_REGION = "none"
N_ADD_SLOTS = 6
# a weight variation column: weight_<name>Up / weight_<name>Down (ratio to the nominal weight)
WEIGHT_VARIATION = re.compile(r"^weight_([A-Za-z][A-Za-z0-9_]*?)(Up|Down)$")

# columns that change under a JES variation (stored as <name>_<variation>)
VARIED_COLUMNS = (
    "m_jj",
    "pt_jj",
    "j1_pt",
    "j2_pt",
    "met_pt",
    "dphi_jj_met",
    "n_add_jets",
    "add_jet_max_pt",
    "min_dphi_jet_met",
    "pt_balance",
)
NOMINAL_ONLY_COLUMNS = (
    "dr_jj",
    "deta_jj",
    "btag_max",
    "btag_min",
    "j1_eta",
    "j2_eta",
    "soft_activity",
)
DERIVED_COLUMNS = VARIED_COLUMNS + NOMINAL_ONLY_COLUMNS


@dataclass
class JetEvent:
    """The standard per-event structure both layouts are reduced to (one JES variation)."""

    jet_pt: np.ndarray  # (N, 2) the two b-jet candidates
    jet_eta: np.ndarray
    jet_phi: np.ndarray
    jet_mass: np.ndarray
    jet_btag: np.ndarray
    add_pt: np.ndarray  # (N, K) additional jets, pT = 0 for empty slots
    add_eta: np.ndarray
    add_phi: np.ndarray
    met_pt: np.ndarray
    met_phi: np.ndarray
    soft_activity: np.ndarray


TWO_PI = 2 * np.pi


def _mod_two_pi(y: np.ndarray) -> np.ndarray:
    """``y % (2 * pi)`` (numpy's floating remainder, bit for bit), faster for -2pi < y < 4pi.

    There numpy's result is ``y + 2pi`` (y < 0: one rounding), ``y`` or ``y - 2pi`` (exact by
    Sterbenz's lemma); other values (and NaN) take ``np.remainder``.
    """
    # y + 2pi * (-1, 0 or 1): adding -2pi is subtracting 2pi, adding +0.0 keeps y (y != -0.0)
    shift = (y < 0).view(np.int8) - (y >= TWO_PI).view(np.int8)
    out = y + TWO_PI * shift
    odd = ~((y > -TWO_PI) & (y < 2 * TWO_PI)) | (y == 0)  # (numpy: -0.0 % 2pi is +0.0)
    if odd.any():
        out[odd] = np.remainder(y[odd], TWO_PI)
    return out


def _dphi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` wrapped into [0, pi] (as ``np.abs((a - b + pi) % (2 * pi) - pi)``)."""
    return np.abs(_mod_two_pi(a - b + np.pi) - np.pi)


def _rectify(phi: np.ndarray) -> np.ndarray:
    """``phi`` wrapped into [-pi, pi) as ``vector`` does: ``(phi + pi) % (2 * pi) - pi``."""
    return _mod_two_pi(phi + np.pi) - np.pi


def _inv_sin_theta2(eta: np.ndarray) -> np.ndarray:
    """``1 / sin(theta)**2`` from eta, as ``vector`` computes it (``mag2 = rho**2 * this``)."""
    expmeta = np.exp(-eta)
    invsintheta = 0.5 * (1 + expmeta**2) / expmeta
    return invsintheta**2


@dataclass
class _Geometry:
    """The per-chunk quantities that a JES variation leaves alone (jet directions), computed
    once from the nominal event and shared by every variation."""

    cos_dphi: np.ndarray  # cos / sin of phi2 - phi1
    sin_dphi: np.ndarray
    sinh_eta: tuple[np.ndarray, np.ndarray]
    inv_sin2: tuple[np.ndarray, np.ndarray]
    add_eta_ok: np.ndarray  # (N, K): |eta| of the additional jets below the threshold

    @classmethod
    def of(cls, ev: JetEvent, add_jet_eta_max: float) -> _Geometry:
        eta0, eta1 = ev.jet_eta[:, 0], ev.jet_eta[:, 1]
        with np.errstate(all="ignore"):
            diff = ev.jet_phi[:, 1] - ev.jet_phi[:, 0]
            return cls(
                cos_dphi=np.cos(diff),
                sin_dphi=np.sin(diff),
                sinh_eta=(np.sinh(eta0), np.sinh(eta1)),
                inv_sin2=(_inv_sin_theta2(eta0), _inv_sin_theta2(eta1)),
                add_eta_ok=np.abs(ev.add_eta) < add_jet_eta_max,
            )


def _pair_sum(ev: JetEvent, geo: _Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pT, phi, mass) of the sum of the two b-jet candidates.

    The operations are those of ``vector`` for two (pt, eta, phi, mass) vectors, in the same
    order (so the values are the same to the last bit), with the direction terms shared by the
    JES variations (:class:`_Geometry`) and without ``vector``'s per-call overhead.
    """
    pt1, pt2 = ev.jet_pt[:, 0], ev.jet_pt[:, 1]
    m1, m2 = ev.jet_mass[:, 0], ev.jet_mass[:, 1]
    with np.errstate(all="ignore"):
        # azimuthal sum (vector._compute.planar.add.rhophi_rhophi)
        u = pt2 * geo.cos_dphi
        v = pt2 * geo.sin_dphi
        rho = np.sqrt((pt1 + u) ** 2 + v**2)
        phi = _rectify(ev.jet_phi[:, 0] + np.arctan2(v, pt1 + u))
        # longitudinal sum (spatial.add.rhophi_eta_rhophi_eta, spatial.eta.rhophi_z)
        z = pt1 * geo.sinh_eta[0] + pt2 * geo.sinh_eta[1]
        eta = np.arcsinh(z / rho)
        if np.isnan(eta).any():  # (without NaN, nan_to_num would return eta as it is)
            eta = np.nan_to_num(
                eta,
                nan=np.nan_to_num((z != 0) * np.inf, posinf=np.nan),
                posinf=np.inf,
                neginf=-np.inf,
            )
        # energies (lorentz.t.rhophi_eta_tau) and the mass of the sum (lorentz.tau.rhophi_eta_t)
        t1 = np.sqrt(np.maximum(np.copysign(m1**2, m1) + pt1**2 * geo.inv_sin2[0], 0))
        t2 = np.sqrt(np.maximum(np.copysign(m2**2, m2) + pt2**2 * geo.inv_sin2[1], 0))
        squared = (t1 + t2) ** 2 - rho**2 * _inv_sin_theta2(eta)
        tau = np.copysign(np.sqrt(np.absolute(squared)), squared)
    return rho, phi, tau


def derive(ev: JetEvent, add_jet_pt_min: float = 30.0, add_jet_eta_max: float = 2.5) -> dict:
    """Analysis columns from the standard structure (vectorised; four-vector sums as the
    ``vector`` package computes them)."""
    return _derive(ev, add_jet_pt_min, _Geometry.of(ev, add_jet_eta_max), nominal=True)


def _derive(ev: JetEvent, add_jet_pt_min: float, geo: _Geometry, nominal: bool) -> dict:
    """:func:`derive` with the direction terms given; ``nominal=False``: only
    :data:`VARIED_COLUMNS` (what a JES variation stores).

    Row reductions over the few jet slots are written as element-wise chains over the slots
    (the same operations in the same order as numpy's reductions, much faster on (N, 2..6)).
    """
    pt_jj, phi_jj, m_jj = _pair_sum(ev, geo)
    pt0, pt1 = ev.jet_pt[:, 0], ev.jet_pt[:, 1]
    met_phi = ev.met_phi
    counted = (ev.add_pt > add_jet_pt_min) & geo.add_eta_ok
    n_add = np.zeros(len(pt0), dtype=np.int64)
    add_max = np.zeros(len(pt0))
    min_dphi = np.minimum(_dphi(ev.jet_phi[:, 0], met_phi), _dphi(ev.jet_phi[:, 1], met_phi))
    for k in range(counted.shape[1]):
        ck = counted[:, k]
        n_add += ck
        rows = np.flatnonzero(ck)
        if len(rows) == 0:
            continue
        add_max[rows] = np.maximum(add_max[rows], ev.add_pt[:, k][rows])
        dphi = _dphi(ev.add_phi[:, k][rows], met_phi[rows])
        min_dphi[rows] = np.minimum(min_dphi[rows], dphi)
    out = {
        "m_jj": m_jj,
        "pt_jj": pt_jj,
        "j1_pt": np.maximum(pt0, pt1),
        "j2_pt": np.minimum(pt0, pt1),
        "met_pt": ev.met_pt,
        "dphi_jj_met": _dphi(phi_jj, met_phi),
        "n_add_jets": n_add.astype(np.float64),
        "add_jet_max_pt": add_max,
        "min_dphi_jet_met": min_dphi,
        "pt_balance": pt_jj / np.maximum(ev.met_pt, 1e-6),
    }
    if not nominal:
        return out
    eta0, eta1 = ev.jet_eta[:, 0], ev.jet_eta[:, 1]
    phi0, phi1 = ev.jet_phi[:, 0], ev.jet_phi[:, 1]
    first = pt0 >= pt1
    out.update(
        {
            # vector's deltaR (spatial.deltaR.rhophi_eta_rhophi_eta)
            "dr_jj": np.sqrt(_rectify(phi0 - phi1) ** 2 + (eta0 - eta1) ** 2),
            "deta_jj": np.abs(eta0 - eta1),
            "btag_max": np.maximum(ev.jet_btag[:, 0], ev.jet_btag[:, 1]),
            "btag_min": np.minimum(ev.jet_btag[:, 0], ev.jet_btag[:, 1]),
            "j1_eta": np.where(first, eta0, eta1),
            "j2_eta": np.where(first, eta1, eta0),
            "soft_activity": ev.soft_activity.astype(np.float64),
        }
    )
    return out


# ---------------------------------------------------------------------------- layouts
def flat_jes_sources(branches: Sequence[str]) -> list[str]:
    """The JES sources of a flat tree: every ``<s>`` with both ``MET_pt_jes_<s>Up`` and
    ``MET_pt_jes_<s>Down`` branches, in branch order (the other varied branches of a source
    are then required by :func:`flat_branches`)."""
    return jesmod.sources_in(branches, prefix="MET_pt_")


def flat_branches(
    layout: Mapping[str, Any], is_mc: bool, jes_sources: Sequence[str] = ()
) -> list[str]:
    """Branches the flat layout reads (MC: also those of the JES sources ``jes_sources``)."""
    names = [
        *KEY_COLUMNS,
        layout["weight_branch"],
        layout["soft_activity_branch"],
        "MET_pt",
        "MET_phi",
    ]
    for slot in (1, 2):
        names += [f"Jet{slot}_{q}" for q in ("pt", "eta", "phi", "mass")]
        names.append(f"Jet{slot}_{layout['btag_branch']}")
    for i in range(1, layout["n_add_jet_slots"] + 1):
        names += [f"AddJet{i}_{q}" for q in ("pt", "eta", "phi")]
    if is_mc:
        for var in jesmod.jes_variations(jes_sources):
            names += [f"Jet{s}_{q}_{var}" for s in (1, 2) for q in ("pt", "mass")]
            names += [f"AddJet{i}_pt_{var}" for i in range(1, layout["n_add_jet_slots"] + 1)]
            names += [f"MET_pt_{var}", f"MET_phi_{var}"]
    return names


def flat_weight_variations(branches: Sequence[str]) -> list[str]:
    """The weight-variation branches ``weight_<name>Up`` / ``weight_<name>Down`` of a flat tree
    (ratios to the nominal weight, MC only), cached as columns of the same name.

    Both sides of every name must be present: a lone ``Up`` or ``Down`` raises
    :class:`~vhbb.core.errors.InputError`.  Sorted by name, ``Up`` before ``Down``.
    """
    found: dict[str, set[str]] = {}
    for branch in branches:
        m = WEIGHT_VARIATION.match(str(branch))
        if m:
            found.setdefault(m.group(1), set()).add(m.group(2))
    lone = sorted(f"weight_{n}{next(iter(s))}" for n, s in found.items() if len(s) != 2)
    if lone:
        raise InputError(
            f"weight variation branch(es) {', '.join(lone)} without the opposite side: a "
            "weight systematic needs both weight_<name>Up and weight_<name>Down"
        )
    return [f"weight_{n}{side}" for n in sorted(found) for side in ("Up", "Down")]


def flat_events(
    arrays: Mapping[str, np.ndarray],
    layout: Mapping[str, Any],
    variation: str | None,
    *,
    base: JetEvent | None = None,
) -> JetEvent:
    """The standard structure of a flat chunk under ``variation`` (None: nominal).

    ``base``: the nominal structure of the same chunk; its arrays of the quantities a JES
    variation leaves alone (directions, b-tag, soft activity) are shared instead of rebuilt.
    """
    sfx = "" if variation is None else f"_{variation}"
    k = layout["n_add_jet_slots"]
    f8 = np.float64

    def stack(fmt: str, idx) -> np.ndarray:  # type: ignore[no-untyped-def]
        # (N, K) in column-major order: each slot is one contiguous column
        cols = [arrays[fmt.format(i)] for i in idx]
        out = np.empty((len(cols), len(cols[0])), dtype=f8)
        for j, col in enumerate(cols):
            out[j] = col
        return out.T

    if base is None:
        jet_eta = stack("Jet{}_eta", (1, 2))
        jet_phi = stack("Jet{}_phi", (1, 2))
        jet_btag = stack("Jet{}_" + layout["btag_branch"], (1, 2))
        add_eta = stack("AddJet{}_eta", range(1, k + 1))
        add_phi = stack("AddJet{}_phi", range(1, k + 1))
        soft = np.asarray(arrays[layout["soft_activity_branch"]], dtype=f8)
    else:
        jet_eta, jet_phi, jet_btag = base.jet_eta, base.jet_phi, base.jet_btag
        add_eta, add_phi, soft = base.add_eta, base.add_phi, base.soft_activity
    return JetEvent(
        jet_pt=stack("Jet{}_pt" + sfx, (1, 2)),
        jet_eta=jet_eta,
        jet_phi=jet_phi,
        jet_mass=stack("Jet{}_mass" + sfx, (1, 2)),
        jet_btag=jet_btag,
        add_pt=stack("AddJet{}_pt" + sfx, range(1, k + 1)),
        add_eta=add_eta,
        add_phi=add_phi,
        met_pt=np.asarray(arrays["MET_pt" + sfx], dtype=f8),
        met_phi=np.asarray(arrays["MET_phi" + sfx], dtype=f8),
        soft_activity=soft,
    )


def nanoaod_branches(layout: Mapping[str, Any], is_mc: bool) -> list[str]:
    names = [
        *KEY_COLUMNS,
        "Jet_pt",
        "Jet_eta",
        "Jet_phi",
        "Jet_mass",
        layout["btag_branch"],
        "MET_pt",
        "MET_phi",
        layout["soft_activity_branch"],
    ]
    if layout.get("jet_id_min", 0) > 0:
        names.append("Jet_jetId")
    if is_mc:
        names.append(layout["weight_branch"])
    return names


def nanoaod_events(
    arrays, layout: Mapping[str, Any]
) -> tuple[dict[str | None, JetEvent], np.ndarray]:  # type: ignore[no-untyped-def]
    """Reduce jagged NanoAOD arrays to :class:`JetEvent` per variation.

    Returns the events per variation (None = nominal) and the mask of events with at least two
    selected jets (events with fewer cannot form a b-jet pair and are dropped).
    """
    from vhbb.data import layouts

    preset = layouts.nanoaod_preset(layout)
    red = layouts.reduce_custom(arrays, preset, is_mc=False, variations=True)
    base = jet_event(red)
    out: dict[str | None, JetEvent] = {None: base}
    out.update(jes_events(red, base, preset))
    return out, red.has_pair


def jes_events(red, base: JetEvent, layout: Mapping[str, Any]) -> dict[str, JetEvent]:  # type: ignore[no-untyped-def]
    """The ``jes_<source>Up`` / ``Down`` structures of a reduced custom-layout chunk, in source
    order: read from branches (``red.jes``, the layout's ``jes: {from: branches}``,
    :func:`branch_jes`) or parametrised (:func:`scale_jes` per source of ``jes_sources``)."""
    from vhbb.data import layouts

    trig = _directions(base)
    if red.jes:
        return {var: branch_jes(base, varied, directions=trig) for var, varied in red.jes.items()}
    sources = layouts.parametrised_sources(layout)
    return {
        var: scale_jes(base, sign, sources[source], directions=trig)
        for source, var, sign in jesmod.signed_variations(sources)
    }


def jet_event(red) -> JetEvent:  # type: ignore[no-untyped-def]
    """The standard structure from a reduced chunk (:class:`vhbb.data.layouts.Reduced`)."""
    from vhbb.data.layouts import pad, two

    if red.padded is not None:  # the numpy reduction (layouts._fast_jets)
        p = red.padded
        return JetEvent(
            jet_pt=p["pair_pt"],
            jet_eta=p["pair_eta"],
            jet_phi=p["pair_phi"],
            jet_mass=p["pair_mass"],
            jet_btag=p["pair_btag"],
            add_pt=p["add_pt"],
            add_eta=p["add_eta"],
            add_phi=p["add_phi"],
            met_pt=red.met_pt,
            met_phi=red.met_phi,
            soft_activity=np.asarray(red.soft_activity, dtype=np.float64),
        )
    return JetEvent(
        jet_pt=two(red.pair.pt),
        jet_eta=two(red.pair.eta),
        jet_phi=two(red.pair.phi),
        jet_mass=two(red.pair.mass),
        jet_btag=two(red.pair.btag),
        add_pt=pad(red.add.pt, N_ADD_SLOTS),
        add_eta=pad(red.add.eta, N_ADD_SLOTS),
        add_phi=pad(red.add.phi, N_ADD_SLOTS),
        met_pt=red.met_pt,
        met_phi=red.met_phi,
        soft_activity=np.asarray(red.soft_activity, dtype=np.float64),
    )


def flat_jet_set(ev: JetEvent, name: str):  # type: ignore[no-untyped-def]
    """A jet set of the flat layout as awkward records (additional jets: mass and b-tag 0)."""
    import awkward as ak

    def reg(x: np.ndarray):  # type: ignore[no-untyped-def]
        return ak.from_regular(ak.Array(np.asarray(x, dtype=np.float64)), axis=1)

    pair = ak.zip(
        {
            "pt": reg(ev.jet_pt),
            "eta": reg(ev.jet_eta),
            "phi": reg(ev.jet_phi),
            "mass": reg(ev.jet_mass),
            "btag": reg(ev.jet_btag),
        }
    )
    if name == "pair":
        return pair
    keep = ak.Array(ev.add_pt > 0)
    zero = np.zeros_like(ev.add_pt)
    add = ak.zip(
        {
            "pt": reg(ev.add_pt),
            "eta": reg(ev.add_eta),
            "phi": reg(ev.add_phi),
            "mass": reg(zero),
            "btag": reg(zero),
        }
    )[ak.from_regular(keep, axis=1)]
    return ak.concatenate([pair, add], axis=1)


def _rowsum(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=1)`` of an (N, K) array for small K: the same sequential sum over the
    columns from +0.0 (so an all -0.0 row sums to +0.0, as numpy's), without numpy's slow
    reduction along a short axis."""
    out = a[:, 0] + 0.0
    for k in range(1, a.shape[1]):
        out += a[:, k]
    return out


def _directions(ev: JetEvent) -> dict[str, Any]:
    """cos / sin of the jet and MET azimuths, shared by the up and down JES variations; for the
    additional jets only in the slots that contribute to MET (pT != 0 or a non-finite azimuth):
    ``add`` holds (rows, cos, sin) per slot."""
    add = []
    for k in range(ev.add_pt.shape[1]):
        phi = ev.add_phi[:, k]
        rows = np.flatnonzero((ev.add_pt[:, k] != 0) | ~np.isfinite(phi))
        add.append((rows, np.cos(phi[rows]), np.sin(phi[rows])))
    return {
        "cos_jet": np.cos(ev.jet_phi),
        "sin_jet": np.sin(ev.jet_phi),
        "cos_met": np.cos(ev.met_phi),
        "sin_met": np.sin(ev.met_phi),
        "add": add,
    }


def scale_jes(
    ev: JetEvent,
    sign: float,
    unc: Mapping[str, float],
    *,
    directions: Mapping[str, Any] | None = None,
) -> JetEvent:
    """Scale every jet by ``1 + sign * delta(pT)`` and propagate to MET (``unc``: one
    parametrised JES source, ``delta`` its :func:`vhbb.data.jes.relative_uncertainty`).

    ``directions``: :func:`_directions` of ``ev`` (computed here when not given).  The MET shift
    sums the jets slot by slot from +0.0 (``dpx = sum over the pair + sum over the additional
    jets``, as numpy's ``sum(axis=1)``); the empty slots (pT = 0) only add signed zeros, which
    change no such sum (it is never -0.0), so they are skipped.
    """
    trig = _directions(ev) if directions is None else directions
    s_pair = 1.0 + sign * jesmod.relative_uncertainty(unc, ev.jet_pt)
    d_pair = ev.jet_pt * (s_pair - 1)
    pair_x, pair_y = d_pair * trig["cos_jet"], d_pair * trig["sin_jet"]
    # every pT = 0 slot has the scale of pT = 0
    s_empty = 1.0 + sign * jesmod.relative_uncertainty(unc, np.zeros(1))
    s_add = np.full(ev.add_pt.shape[::-1], s_empty[0]).T  # column-major: slots contiguous
    n = len(ev.met_pt)
    add_x, add_y = np.zeros(n), np.zeros(n)
    for k, (rows, cos, sin) in enumerate(trig["add"]):
        pt = ev.add_pt[:, k][rows]
        s_k = 1.0 + sign * jesmod.relative_uncertainty(unc, pt)
        s_add[:, k][rows] = s_k
        d = pt * (s_k - 1)
        add_x[rows] += d * cos
        add_y[rows] += d * sin
    dpx = _rowsum(pair_x) + add_x
    dpy = _rowsum(pair_y) + add_y
    mx = ev.met_pt * trig["cos_met"] - dpx
    my = ev.met_pt * trig["sin_met"] - dpy
    return JetEvent(
        jet_pt=ev.jet_pt * s_pair,
        jet_eta=ev.jet_eta,
        jet_phi=ev.jet_phi,
        jet_mass=ev.jet_mass * s_pair,
        jet_btag=ev.jet_btag,
        add_pt=ev.add_pt * s_add,
        add_eta=ev.add_eta,
        add_phi=ev.add_phi,
        met_pt=np.hypot(mx, my),
        met_phi=np.arctan2(my, mx),
        soft_activity=ev.soft_activity,
    )


def branch_jes(
    ev: JetEvent,
    varied: Mapping[str, np.ndarray],
    *,
    directions: Mapping[str, Any] | None = None,
) -> JetEvent:
    """One JES variation read from branches (a custom layout's ``jes: {from: branches}``).

    ``varied`` (:attr:`vhbb.data.layouts.Reduced.jes`): the varied pT of the same jets as ``ev``
    (``pair_pt`` (N, 2), ``add_pt`` (N, K), 0 in empty slots), optionally the varied pair mass
    (``pair_mass``) and MET (``met_pt``, ``met_phi``).  Without a mass branch the nominal mass
    is scaled by the ratio of varied to nominal pT (as :func:`scale_jes` scales it).  Without
    MET branches the change is propagated to MET as :func:`scale_jes` does: the nominal MET
    minus the vector sum of the pT shifts (varied - nominal) of the pair and the additional jets.
    The jets' directions, b-tag and the soft activity are the nominal ones.
    """
    pair_pt = np.asarray(varied["pair_pt"], dtype=np.float64)
    add_pt = np.asarray(varied["add_pt"], dtype=np.float64)
    if "pair_mass" in varied:
        mass = np.asarray(varied["pair_mass"], dtype=np.float64)
    else:
        with np.errstate(all="ignore"):
            mass = ev.jet_mass * np.where(ev.jet_pt != 0, pair_pt / ev.jet_pt, 1.0)
    if "met_pt" in varied:
        met_pt = np.asarray(varied["met_pt"], dtype=np.float64)
        met_phi = np.asarray(varied["met_phi"], dtype=np.float64)
    else:
        trig = _directions(ev) if directions is None else directions
        d_pair = pair_pt - ev.jet_pt
        d_add = add_pt - ev.add_pt  # empty slots: 0 - 0
        with np.errstate(all="ignore"):
            cos_add, sin_add = np.cos(ev.add_phi), np.sin(ev.add_phi)
            dpx = _rowsum(d_pair * trig["cos_jet"]) + _rowsum(
                np.where(d_add != 0, d_add * cos_add, 0.0)
            )
            dpy = _rowsum(d_pair * trig["sin_jet"]) + _rowsum(
                np.where(d_add != 0, d_add * sin_add, 0.0)
            )
        mx = ev.met_pt * trig["cos_met"] - dpx
        my = ev.met_pt * trig["sin_met"] - dpy
        met_pt, met_phi = np.hypot(mx, my), np.arctan2(my, mx)
    return JetEvent(
        jet_pt=pair_pt,
        jet_eta=ev.jet_eta,
        jet_phi=ev.jet_phi,
        jet_mass=mass,
        jet_btag=ev.jet_btag,
        add_pt=add_pt,
        add_eta=ev.add_eta,
        add_phi=ev.add_phi,
        met_pt=met_pt,
        met_phi=met_phi,
        soft_activity=ev.soft_activity,
    )


# ---------------------------------------------------------------------------- regions
def variation_namespace(columns: Mapping[str, np.ndarray], variation: str | None) -> dict:
    """Columns as seen by a selection under ``variation`` (varied columns replace nominal)."""
    if variation is None:
        return {k: v for k, v in columns.items() if k in DERIVED_COLUMNS}
    ns = {k: columns[k] for k in DERIVED_COLUMNS if k in columns}
    for name in VARIED_COLUMNS:
        ns[name] = columns[f"{name}_{variation}"]
    return ns


def assign_regions(
    ns: Mapping[str, np.ndarray], preselection: str, definitions: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """Preselection mask and region name per event (``"none"`` outside every region).

    Raises :class:`~vhbb.core.errors.ConfigError`-like :class:`DataError` if two regions overlap.
    """
    presel, codes = _region_codes(ns, preselection, definitions)
    names = np.array([NO_REGION, *definitions], dtype=object)
    return presel, names[codes]


def _region_codes(
    ns: Mapping[str, np.ndarray], preselection: str, definitions: Mapping[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`assign_regions` with the region as a code: 0 outside every region, ``i + 1`` in
    the ``i``-th region of ``definitions`` (the codes of :func:`_region_dtype`)."""
    names = list(definitions)
    presel = expressions.evaluate(preselection, ns).astype(bool)
    n = presel.size
    codes = np.zeros(n, dtype=np.int8 if len(names) < 127 else np.int32)
    taken = np.zeros(n, dtype=bool)
    for i, (name, expr) in enumerate(definitions.items()):
        mask = presel & expressions.evaluate(expr, ns).astype(bool)
        overlap = mask & taken
        if overlap.any():
            others = sorted(
                {NO_REGION if c == 0 else names[c - 1] for c in np.unique(codes[overlap])}
            )
            raise DataError(
                f"regions overlap: {int(overlap.sum())} events pass both '{name}' and "
                f"{', '.join(repr(o) for o in others)}; regions must be mutually exclusive "
                "(fix their selections under regions.definitions)"
            )
        codes[mask] = i + 1
        taken |= mask
    return presel, codes


# ---------------------------------------------------------------------------- reading
def _open_tree(path: str, tree: str):  # type: ignore[no-untyped-def]
    import uproot

    is_remote = "://" in path
    if not is_remote and not Path(path).exists():
        raise InputError(f"input file not found: {path} (check the sample's 'files' list)")
    try:
        fin = uproot.open(path)
    except Exception as exc:  # uproot raises many types for corrupt files
        raise InputError(
            f"cannot open ROOT file {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    try:
        keys = [k.split(";")[0] for k in fin.keys(recursive=False)]
    except Exception as exc:
        raise InputError(f"cannot read the directory of ROOT file {path}: {exc}") from None
    if tree not in keys:
        close = difflib.get_close_matches(tree, keys, n=3)
        raise InputError(
            f"tree '{tree}' not found in {path}"
            + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else "")
            + f"; the file holds: {', '.join(keys) or 'nothing'}. Set the layout's 'tree'."
        )
    try:
        return fin[tree]
    except Exception as exc:
        raise InputError(
            f"cannot read tree '{tree}' from {path}: {exc}. The file may be corrupt."
        ) from None


def _check_branches(
    ttree, path: str, needed: list[str], keys: Mapping[str, str] | None = None
) -> None:  # type: ignore[no-untyped-def]
    """Raise :class:`InputError` naming the first missing branch of ``needed``, its closest
    names and, for a branch in ``keys``, the layout key that names it."""
    try:
        available = set(ttree.keys())
    except Exception as exc:
        raise InputError(
            f"cannot read the branches of {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    for name in needed:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available), n=3)
            raise InputError(
                f"branch '{name}' missing in {path}"
                + (f" (close matches: {', '.join(close)})" if close else "")
                + "; check the sample's layout (samples.layouts"
                + (f".<name>.{keys[name]}" if keys and name in keys else "")
                + ") or the input file."
            )


def cache_file(
    path: str,
    *,
    sample: str,
    is_mc: bool,
    layout: Mapping[str, Any],
    preselection: str,
    regions: Mapping[str, str],
    nan_policy: str = "drop",
    chunk_size: int = 200_000,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read one ROOT file in bounded-memory chunks; return the selected events and statistics.

    The statistics hold the signed sum of generator weights over *all* events read (needed for
    the sigma*L normalisation), the counts read / with a b-jet pair / dropped for NaN / kept.
    """
    from tqdm import tqdm

    from vhbb.data import layouts

    kind = layout["kind"]
    ttree = _open_tree(path, layout["tree"])
    if kind == "nanoaod":
        layout, kind = layouts.nanoaod_preset(layout), "custom"
    if kind == "flat":
        sources = _flat_sources(ttree, path) if is_mc else []
        needed = flat_branches(layout, is_mc, sources)
        weight_branch = layout["weight_branch"]
    else:
        sources = layouts.jes_source_names(layout) if is_mc else []
        needed = layouts.custom_branches(layout, is_mc)
        weight_branch = str(layout.get("weight", "genWeight"))
    jes_keys = layouts.jes_keys(layout) if kind == "custom" and is_mc else {}
    _check_branches(ttree, path, needed, jes_keys)
    extra = _correction_branches(ttree, path, layout, is_mc)
    ratios = _flat_ratio_branches(ttree, path, layout, is_mc) if kind == "flat" else []
    needed = list(dict.fromkeys([*needed, *extra, *ratios]))
    norm = dict(layout.get("normalisation") or {}) if kind == "custom" else {}
    stats = {
        "input": path,
        "n_read": 0,
        "sum_gen_weight": 0.0,
        "n_pair": 0,
        "n_nan_dropped": 0,
        "n_selected": 0,
        "jes_sources": list(sources),
    }
    frames: list[pd.DataFrame] = []
    library = "np" if kind == "flat" else "ak"
    columns = _extra_column_names(layout, is_mc) + ratios
    try:
        chunks = ttree.iterate(needed, step_size=chunk_size, library=library)
        for arrays in tqdm(
            chunks, desc=Path(path).name, unit="chunk", mininterval=10, disable=None
        ):
            frame = _process_chunk(
                arrays,
                kind,
                layout,
                is_mc,
                weight_branch,
                preselection,
                regions,
                stats,
                nan_policy,
                path,
                extra_branches=extra,
                ratio_branches=ratios,
            )
            frames.append(frame)
    except VhbbError:
        raise
    except Exception as exc:
        raise InputError(
            f"failed reading {path} ({sample}): {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else _empty_frame(is_mc, list(regions), columns, sources)
    )
    stats["n_selected"] = len(frame)
    if is_mc and norm.get("from") == "runs":
        stats["sum_gen_weight_events"] = stats["sum_gen_weight"]
        stats["sum_gen_weight"] = layouts.sum_of_weights(path, norm)
    elif is_mc and norm.get("from") == "value":
        if "value" not in norm:
            raise ConfigError(
                "config error at 'samples.layouts.<name>.normalisation': 'from: value' needs "
                "'value' (the sample's total sum of generator weights)"
            )
        stats["sum_gen_weight_fixed"] = float(norm["value"])
    if stats["n_read"] == 0:
        log.warning("%s (%s): tree '%s' holds no events", path, sample, layout["tree"])
    return frame, stats


def _flat_sources(ttree, path: str) -> list[str]:  # type: ignore[no-untyped-def]
    """The JES sources of a flat MC tree (:func:`flat_jes_sources`); none is an
    :class:`~vhbb.core.errors.InputError` (a single-source file of an older toy says so)."""
    try:
        branches = [str(b) for b in ttree.keys()]
    except Exception as exc:
        raise InputError(
            f"cannot read the branches of {path}: {type(exc).__name__}: {exc}. The file may be "
            "truncated or corrupt: copy or regenerate it."
        ) from None
    sources = flat_jes_sources(branches)
    if not sources:
        hint = (
            "; it has the single-source branches of an older toy (MET_pt_jesUp): regenerate it "
            "(remove resources/ntuples)"
            if "MET_pt_jesUp" in branches
            else ""
        )
        raise InputError(
            f"{path}: no JES variation branches (<branch>_jes_<source>Up/Down, e.g. "
            f"MET_pt_jes_absoluteUp) in this flat MC tree{hint}"
        )
    return sources


def _correction_branches(ttree, path: str, layout: Mapping[str, Any], is_mc: bool) -> list[str]:  # type: ignore[no-untyped-def]
    """Branches the correction inputs read (names that are no cached column or jet field)."""
    from vhbb.data import corrections

    specs = list(layout.get("corrections") or []) if is_mc else []
    if not specs:
        return []
    jet_fields = {"pt", "eta", "phi", "mass", "btag"} | set(
        (layout.get("jets") or {}).get("fields") or {}
    )
    extra = set(_extra_column_names(layout, is_mc))
    names = sorted(corrections.event_names(specs) - set(DERIVED_COLUMNS) - jet_fields - extra)
    available = set(ttree.keys())
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, sorted(available | jet_fields), n=3)
            raise InputError(
                f"correction input column '{name}' (samples.layouts.<name>.corrections) is "
                f"neither a cached column, a jet field ({', '.join(sorted(jet_fields))}) nor a "
                f"branch of {path}" + (f" (close matches: {', '.join(close)})" if close else "")
            )
    return names


def _flat_ratio_branches(ttree, path: str, layout: Mapping[str, Any], is_mc: bool) -> list[str]:  # type: ignore[no-untyped-def]
    """The weight-variation branches of a flat MC tree (:func:`flat_weight_variations`); a name
    that a correction also writes is a :class:`~vhbb.core.errors.ConfigError`."""
    from vhbb.data import corrections

    if not is_mc:
        return []
    try:
        names = flat_weight_variations(list(ttree.keys()))
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    clash = sorted(set(names) & set(corrections.variation_columns(layout.get("corrections") or [])))
    if clash:
        raise ConfigError(
            f"config error at 'samples.layouts.<name>.corrections': the correction column(s) "
            f"{', '.join(clash)} are also branches of {path}; rename the correction (its 'name')"
        )
    return names


def _extra_column_names(layout: Mapping[str, Any], is_mc: bool) -> list[str]:
    from vhbb.data import corrections

    names = list(layout.get("columns") or {}) if layout.get("kind") == "custom" else []
    if is_mc:
        names += corrections.variation_columns(layout.get("corrections") or [])
    return names


def _process_chunk(
    arrays,
    kind,
    layout,
    is_mc,
    weight_branch,
    preselection,
    regions,
    stats,
    nan_policy,
    path,
    *,
    extra_branches=(),
    ratio_branches=(),
):  # type: ignore[no-untyped-def]
    from vhbb.data import corrections, layouts

    if kind == "nanoaod":
        layout, kind = layouts.nanoaod_preset(layout), "custom"
    extras: dict[str, np.ndarray] = {}
    if kind == "flat":
        n = len(arrays["event"])
        gen_weight = np.asarray(arrays[weight_branch], dtype=np.float64) if is_mc else np.ones(n)
        base = flat_events(arrays, layout, None)
        variations = {None: base}
        if is_mc:
            for var in jesmod.jes_variations(flat_jes_sources(list(arrays))):
                variations[var] = flat_events(arrays, layout, var, base=base)
        has_pair = np.ones(n, dtype=bool)
        keys = {k: np.asarray(arrays[k]) for k in KEY_COLUMNS}
        event_ns = {k: np.asarray(arrays[k], dtype=np.float64) for k in extra_branches}

        def jet_set(name: str):  # type: ignore[no-untyped-def]
            return flat_jet_set(variations[None], name)
    else:
        red = layouts.reduce_custom(
            arrays, layout, is_mc, path, stats["n_read"], extra=list(extra_branches)
        )
        n = len(red.has_pair)
        gen_weight = red.gen_weight
        base = jet_event(red)
        variations = {None: base}
        if is_mc:
            variations.update(jes_events(red, base, layout))
        has_pair = red.has_pair
        keys = dict(red.keys)
        event_ns = red.namespace
        extras = layouts.extra_columns(layout, red.namespace)
        jet_set = red.jet_set
    if is_mc:
        bad_weight = ~np.isfinite(gen_weight)
        if bad_weight.any():
            first = stats["n_read"] + int(np.flatnonzero(bad_weight)[0])
            raise DataError(
                f"{int(bad_weight.sum())} non-finite generator weight(s) in branch "
                f"'{weight_branch}' of {path} (first at entry {first}): the sigma*L "
                "normalisation sums every generated event's weight, so they cannot be dropped; "
                "fix or regenerate the file, or remove it from the sample's files"
            )
    stats["n_read"] += n
    stats["sum_gen_weight"] += float(gen_weight.sum())
    stats["n_pair"] += int(has_pair.sum())
    columns: dict[str, np.ndarray] = dict(keys)  # already restricted to the events with a pair
    columns["gen_weight"] = gen_weight[has_pair]
    add_pt_min = layout["add_jet_pt_min"]
    geo = _Geometry.of(variations[None], layout["add_jet_eta_max"])  # shared by the variations
    columns.update(_derive(variations[None], add_pt_min, geo, nominal=True))
    specs = list(layout.get("corrections") or []) if is_mc else []
    if specs:
        ns = {**event_ns, **{k: columns[k] for k in DERIVED_COLUMNS}, **extras}
        factor, ratios = corrections.evaluate(specs, ns, jet_set)
        columns["gen_weight"] = columns["gen_weight"] * factor
        columns.update(ratios)
    columns.update(extras)
    for name in ratio_branches:  # flat layout: weight variations read as cached (ratios)
        columns[name] = np.asarray(arrays[name], dtype=np.float64)[has_pair]
    varied = [v for v in variations if v is not None]  # the JES variations, in source order
    for var in varied:
        derived = _derive(variations[var], add_pt_min, geo, nominal=False)
        for name in VARIED_COLUMNS:
            columns[f"{name}_{var}"] = derived[name]
    # non-finite values
    bad = np.zeros(len(columns["gen_weight"]), dtype=bool)
    for name, values in columns.items():
        # a finite sum means every value is finite (one fast pass); else look closer
        if values.dtype.kind == "f" and not np.isfinite(np.sum(values)):
            col_bad = ~np.isfinite(values)
            if col_bad.any():
                if nan_policy == "error":
                    raise DataError(
                        f"{int(col_bad.sum())} non-finite values of '{name}' in {path}; "
                        "fix the input or set samples.nan_policy: drop"
                    )
                log.warning(
                    "%s: %d non-finite values of '%s' (dropped)", path, int(col_bad.sum()), name
                )
                bad |= col_bad
    if bad.any():
        stats["n_nan_dropped"] += int(bad.sum())
        columns = {k: v[~bad] for k, v in columns.items()}
    keep = np.zeros(len(columns["gen_weight"]), dtype=bool)
    region_codes = {}
    for var in [None, *varied]:
        ns = variation_namespace(columns, var)
        presel, codes = _region_codes(ns, preselection, regions)
        keep |= presel
        region_codes["region" if var is None else f"region_{var}"] = codes
    rows = np.flatnonzero(keep)
    columns = {k: np.asarray(v).take(rows) for k, v in columns.items()}
    cats = _region_dtype(list(regions))
    for name, codes in region_codes.items():
        columns[name] = pd.Categorical.from_codes(codes.take(rows), dtype=cats)  # type: ignore[assignment]
    return _frame(columns, is_mc, list(regions))


def _region_dtype(region_names: list[str]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype([NO_REGION, *region_names])


def _frame(columns: dict[str, Any], is_mc: bool, region_names: list[str]) -> pd.DataFrame:
    """The cached frame (region columns: names, or ready :class:`pandas.Categorical`)."""
    cats = _region_dtype(region_names)
    data: dict[str, Any] = {}
    for k in KEY_COLUMNS:
        data[k] = np.asarray(columns[k]).astype(
            {"run": np.uint32, "luminosityBlock": np.uint32, "event": np.uint64}[k]
        )
    data["gen_weight"] = np.asarray(columns["gen_weight"], dtype=np.float64)
    for k, v in columns.items():
        if k in data:
            continue
        if k.startswith("region"):
            data[k] = v if isinstance(v, pd.Categorical) else pd.Categorical(v, dtype=cats)
        else:
            data[k] = np.asarray(v, dtype=np.float32)
    return pd.DataFrame(data)


def _empty_frame(
    is_mc: bool,
    region_names: list[str],
    extra: list[str] | tuple[str, ...] = (),
    jes_sources: Sequence[str] = (),
) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {k: np.zeros(0) for k in KEY_COLUMNS}
    cols["gen_weight"] = np.zeros(0)
    for name in DERIVED_COLUMNS:
        cols[name] = np.zeros(0)
    for name in extra:
        cols[name] = np.zeros(0)
    cols["region"] = np.zeros(0, dtype=object)
    if is_mc:
        for var in jesmod.jes_variations(jes_sources):
            for name in VARIED_COLUMNS:
                cols[f"{name}_{var}"] = np.zeros(0)
            cols[f"region_{var}"] = np.zeros(0, dtype=object)
    return _frame(cols, is_mc, region_names)


# ---------------------------------------------------------------------------- parquet I/O
def write_parquet(path: str | Path, frame: pd.DataFrame, metadata: Mapping[str, Any]) -> None:
    """Write ``frame`` with JSON ``metadata`` (key ``vhbb``) atomically."""
    from vhbb.core.io import dumps

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"vhbb"] = dumps(metadata).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_metadata(path: str | Path) -> dict[str, Any]:
    import json

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"vhbb", b"{}"))


def _part_names(part_stats: list[dict[str, Any]]) -> list[str]:
    return [str(st.get("input") or f"part {i}") for i, st in enumerate(part_stats)]


def check_duplicate_keys(
    parts: list[pd.DataFrame], part_stats: list[dict[str, Any]], sample: str
) -> None:
    """Raise :class:`DataError` if an event key (run, luminosityBlock, event) repeats in a sample.

    The message names the files holding the repeated events (a file listed twice, two files
    with the same events).  Only events that passed the preselection are compared.
    """
    sizes = [len(p) for p in parts]
    if sum(sizes) < 2:
        return
    keys = pd.concat([p[list(KEY_COLUMNS)] for p in parts], ignore_index=True)
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return
    part_of = np.repeat(np.arange(len(parts)), sizes)
    names = _part_names(part_stats)
    involved = sorted(set(part_of[repeated].tolist()))
    first = keys[repeated].iloc[0]
    n_extra = int(keys.duplicated(keep="first").sum())
    if len(involved) == 1:
        where = f"inside the file {names[involved[0]]}"
    else:
        where = f"in the files {', '.join(names[i] for i in involved)}"
    raise DataError(
        f"sample '{sample}': {n_extra} event(s) appear more than once {where} (same run, "
        f"luminosityBlock, event; e.g. {int(first['run'])}:{int(first['luminosityBlock'])}:"
        f"{int(first['event'])}): the same events would be counted twice; remove the duplicate "
        f"file from samples.list.{sample}.files (or fix the file)"
    )


def remove_overlap(
    frame: pd.DataFrame, higher: Mapping[str, pd.DataFrame], sample: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop the events of ``frame`` whose key is in a higher-priority data sample.

    ``higher`` maps each data sample ranked before ``sample`` in ``samples.overlap_removal``
    to its selected events' keys; an event is kept once, in the first sample of the priority
    order that holds it.
    """
    removed: dict[str, int] = {}
    if len(frame) == 0 or not higher:
        return frame, removed
    index = pd.MultiIndex.from_frame(frame[list(KEY_COLUMNS)])
    drop = np.zeros(len(frame), dtype=bool)
    for name, keys in higher.items():
        if len(keys) == 0:
            removed[name] = 0
            continue
        hit = index.isin(pd.MultiIndex.from_frame(keys[list(KEY_COLUMNS)]))
        removed[name] = int((hit & ~drop).sum())
        drop |= hit
    if drop.any():
        log.info(
            "sample '%s': %d events also in higher-priority data samples removed (%s)",
            sample,
            int(drop.sum()),
            ", ".join(f"{k}: {v}" for k, v in removed.items()),
        )
    return frame[~drop].reset_index(drop=True), removed


def _check_weight_variations(parts: list[pd.DataFrame], names: list[str], sample: str) -> None:
    """Every file of a sample holds the same weight-variation columns (else DataError)."""
    sets = [{c for c in p.columns if WEIGHT_VARIATION.match(str(c))} for p in parts]
    if any(s != sets[0] for s in sets[1:]):
        odd = [n for n, s in zip(names, sets, strict=True) if s != sets[0]]
        raise DataError(
            f"sample '{sample}': its files differ in the weight-variation columns "
            f"(weight_<name>Up/Down): {names[0]} has {sorted(sets[0]) or 'none'}, but "
            f"{', '.join(odd)} differ; regenerate the files or make them consistent"
        )


def _part_jes_sources(part: pd.DataFrame, stats: Mapping[str, Any]) -> list[str]:
    """The JES sources of one cached file: its metadata's list, else found in its columns."""
    if "jes_sources" in stats:
        return [str(s) for s in stats["jes_sources"]]
    return jesmod.sources_in(part.columns, prefix="region_")


def _check_jes_sources(
    parts: list[pd.DataFrame], part_stats: list[dict[str, Any]], names: list[str], sample: str
) -> list[str]:
    """The JES sources every file of a sample shares, in order (else DataError)."""
    lists = [_part_jes_sources(p, s) for p, s in zip(parts, part_stats, strict=True)]
    odd = [n for n, got in zip(names, lists, strict=True) if got != lists[0]]
    if odd:
        raise DataError(
            f"sample '{sample}': its files differ in the JES sources: {names[0]} has "
            f"{lists[0] or 'none'}, but {', '.join(odd)} differ; regenerate the files or make "
            "them consistent"
        )
    return lists[0]


def merge_sample(
    parts: list[pd.DataFrame],
    part_stats: list[dict[str, Any]],
    *,
    sample: str,
    is_mc: bool,
    xsec_pb: float | None,
    lumi_fb: float,
    overlap: Mapping[str, pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Concatenate one sample's files and normalise: ``w = sigma * L * genWeight / sum(genWeight)``.

    The sum runs over every generated event read (signed), so ``sum(w) = sigma * L`` before any
    selection.  Data get ``w = 1``.  A repeated event key inside the sample is an error naming
    the files; for data, ``overlap`` (keys of higher-priority data samples, see
    ``samples.overlap_removal``) removes the events already kept by another sample.

    Empty input is reported for what it is: no files, files holding no events, no event with a
    b-jet pair, every event dropped for non-finite values (errors); no event passing the
    preselection is a warning (the export then fails naming the sample).
    """
    if not parts:
        raise InputError(
            f"sample '{sample}' has no input files: list them under "
            f"samples.list.{sample}.files (or use source: toy)"
        )
    names = _part_names(part_stats)
    _check_weight_variations(parts, names, sample)
    sources = _check_jes_sources(parts, part_stats, names, sample) if is_mc else []
    n_read = int(sum(int(s.get("n_read") or 0) for s in part_stats))
    if n_read == 0:
        raise InputError(
            f"sample '{sample}': its input files hold no events ({', '.join(names)} are "
            "empty trees); check the files (or the layout's 'tree') and samples.list."
            f"{sample}.files"
        )
    for name, st in zip(names, part_stats, strict=True):
        if not st.get("n_read"):
            log.warning("sample '%s': %s holds no events", sample, name)
    if is_mc and any(s.get("sum_gen_weight") is None for s in part_stats):
        bad = [n for n, s in zip(names, part_stats, strict=True) if s.get("sum_gen_weight") is None]
        raise DataError(
            f"sample '{sample}': the generator weights of {', '.join(bad)} are not finite; "
            "fix or regenerate the files"
        )
    check_duplicate_keys(parts, part_stats, sample)
    frame = pd.concat(parts, ignore_index=True)
    sum_gen = float(sum(float(s.get("sum_gen_weight") or 0.0) for s in part_stats))
    fixed = {s.get("sum_gen_weight_fixed") for s in part_stats}
    if is_mc and fixed != {None}:
        if len(fixed) != 1:
            raise ConfigError(
                f"sample '{sample}': its files disagree on the fixed sum of generator weights "
                f"(normalisation from: value): {sorted(map(str, fixed))}; use one layout"
            )
        sum_gen = float(next(iter(fixed)))  # type: ignore[arg-type]
    stats: dict[str, Any] = {
        "n_files": len(parts),
        "n_read": n_read,
        "n_pair": int(sum(s["n_pair"] for s in part_stats)),
        "n_nan_dropped": int(sum(s["n_nan_dropped"] for s in part_stats)),
        "n_selected": len(frame),
        "sum_gen_weight": sum_gen,
        "jes_sources": sources,
    }
    if not is_mc and overlap:
        frame, removed = remove_overlap(frame, overlap, sample)
        stats["n_overlap_removed"] = removed
        stats["n_selected"] = len(frame)
    if stats["n_pair"] == 0:
        raise DataError(
            f"sample '{sample}': none of the {n_read} events read has two selected jets (a "
            "b-jet pair); check the layout's jet_pt_min/jet_eta_max/jet_id_min "
            "(samples.layouts) and the input files"
        )
    if stats["n_nan_dropped"] >= stats["n_pair"]:
        raise DataError(
            f"sample '{sample}': every event with a b-jet pair ({stats['n_pair']}) was dropped "
            "for non-finite values (samples.nan_policy: drop; see the cache_file logs for the "
            "columns); fix the input files"
        )
    if is_mc:
        if not np.isfinite(sum_gen):
            raise DataError(
                f"sample '{sample}': generator weights contain NaN/inf; fix the input files"
            )
        if sum_gen <= 0:
            raise DataError(
                f"sample '{sample}': the signed sum of generator weights is {sum_gen:g} <= 0, so "
                "sigma*L normalisation is impossible; check the weight branch (samples.layouts)"
            )
        if xsec_pb is None:
            raise ConfigError(
                f"config error at 'samples.list.{sample}.xsec_pb': the MC sample '{sample}' "
                "needs a cross section (pb) for the sigma*L normalisation"
            )
        norm = xsec_pb * 1000.0 * lumi_fb / sum_gen
        frame["weight"] = frame["gen_weight"].to_numpy() * norm
        stats["sigma_l"] = xsec_pb * 1000.0 * lumi_fb
        stats["norm_factor"] = norm
    else:
        frame["weight"] = np.ones(len(frame))
    stats["n_negative"] = int((frame["gen_weight"] < 0).sum()) if len(frame) else 0
    if len(frame) == 0:
        log.warning(
            "sample '%s': %d events read, %d with a b-jet pair, none passes the preselection "
            "(regions.preselection) (empty output written; the export fails on it)",
            sample,
            n_read,
            stats["n_pair"],
        )
    else:
        for region, count in frame["region"].value_counts().items():
            stats.setdefault("n_region", {})[str(region)] = int(count)
    return frame, stats


def run_cache_file(
    path: str,
    output: str | Path,
    *,
    sample: str,
    is_mc: bool,
    layout: Mapping[str, Any],
    preselection: str,
    regions: Mapping[str, str],
    nan_policy: str,
    chunk_size: int,
) -> dict[str, Any]:
    """Cache one input file to parquet (statistics in the parquet metadata)."""
    frame, stats = cache_file(
        path,
        sample=sample,
        is_mc=is_mc,
        layout=layout,
        preselection=preselection,
        regions=regions,
        nan_policy=nan_policy,
        chunk_size=chunk_size,
    )
    stats["input"] = path
    log.info(
        "%s: read %d events, %d with a b-jet pair, %d dropped (non-finite), %d kept",
        path,
        stats["n_read"],
        stats["n_pair"],
        stats["n_nan_dropped"],
        stats["n_selected"],
    )
    write_parquet(output, frame, stats)
    return stats


def run_cache_sample(
    parts: list[str],
    output: str | Path,
    stats_output: str | Path,
    *,
    sample: str,
    is_mc: bool,
    xsec_pb: float | None,
    lumi: float | None,
    overlap_parts: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Merge one sample's cached files, normalise weights, write parquet + statistics JSON.

    ``overlap_parts`` (data with ``samples.overlap_removal``): the cached files of the data
    samples ranked before this one; their events are removed from this sample.
    """
    from vhbb.core.io import write_json
    from vhbb.core.provenance import provenance

    frames = [pd.read_parquet(p) for p in parts]
    part_stats = [read_metadata(p) for p in parts]
    overlap = {
        name: pd.concat(
            [pd.read_parquet(p, columns=list(KEY_COLUMNS)) for p in paths], ignore_index=True
        )
        if paths
        else pd.DataFrame({k: np.zeros(0, np.uint64) for k in KEY_COLUMNS})
        for name, paths in (overlap_parts or {}).items()
    }
    frame, stats = merge_sample(
        frames,
        part_stats,
        sample=sample,
        is_mc=is_mc,
        xsec_pb=xsec_pb,
        lumi_fb=lumi or 0.0,
        overlap=overlap or None,
    )
    stats["sample"] = sample
    prov = {"sample": sample, "is_mc": is_mc, "xsec_pb": xsec_pb, "lumi": lumi}
    if overlap_parts:
        prov["overlap_with"] = list(overlap_parts)
    stats["provenance"] = provenance(prov)
    write_parquet(output, frame, {k: v for k, v in stats.items() if k != "provenance"})
    write_json(stats_output, stats)
    return stats
