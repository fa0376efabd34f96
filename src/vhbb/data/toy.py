"""Built-in toy generator: realistic flat ROOT ntuples for a VH(bb), Z->nunu analysis.

Every event is built from four-vectors, so the kinematic correlations that decorrelation is
about are physical, not put in by hand:

* the b-jet pair is a resonance (ZH: 125 GeV, VZ: 91.2 GeV) or a non-resonant system with a
  falling mass spectrum, given the transverse momentum that balances the vector boson (MET) and
  the additional jets, decayed isotropically in its rest frame and boosted (so ``m_jj ~ pT_jj *
  dR_jj / 2`` for a boosted pair, and jet-pT cuts sculpt the background ``m_jj``);
* jets are smeared with a ~12 % Gaussian response plus a semileptonic low tail (signal ``m_jj``
  resolution ~10-12 %), and MET is recomputed from the reconstructed jets;
* jet-energy-scale (JES) variations, one up/down pair per named source of ``toy.jes_sources``
  (:mod:`vhbb.data.jes`), scale every jet (pT and mass) by ``1 +- delta_s`` and are propagated
  to MET, so events migrate between regions; ``delta_s = constant + over_pt / pT + {b, c,
  l}[flavour]`` (the default sources: ``absolute``, a constant; ``pt``, ``over_pt / pT``;
  ``flavour``, by the jet's true hadron flavour, additional jets being light);
* b-tag scores follow the jets' hadron flavour; the flavour mix is per process;
* an NLO-like fraction of events carries a negative generator weight with a probability that
  depends on pT_jj and m_jj (so dropping or |w|-ing them biases shapes);
* pseudo-data are an independent unweighted sample (own seed) drawn from the *signed* MC
  density, with hidden true scale factors per process and an optional data/MC mismodelling of
  the soft activity (a training input that no region cut uses).

Units: GeV.  Branch layout (``Events`` tree): ``run``, ``luminosityBlock``, ``event``,
``genWeight``; ``Jet{1,2}_{pt,eta,phi,mass,btag}``; ``AddJet{1..4}_{pt,eta,phi}``;
``MET_pt``, ``MET_phi``; ``SoftActivityJetNjets5``; JES variations
``<branch>_jes_<source>{Up,Down}`` (e.g. ``Jet1_pt_jes_absoluteUp``, ``MET_phi_jes_flavourDown``:
the cache's variation keys as suffixes, where NanoAOD-tools writes ``Jet_pt_jesAbsoluteUp``) for
every jet pT/mass and MET (the flat layout finds the sources in these branch names).  The true
flavour is in no branch.  MC files also carry the generator-modelling weight variations
``weight_<name>{Up,Down}`` of :data:`PTV_VARIATIONS` (ratios to the nominal weight, float32): a
pT(V)-dependent reweighting of Z+jets (``ptv_zjets``: Zlf, Zhf) and ttbar (``ptv_tt``: TT),
``1 +- 0.1 * clip((MET_pt - 200) / 300, 0, 1)`` (pT(V) = MET pT in Z->nunu), 1 for every other
process; the flat layout caches them as columns of the same name
(:func:`vhbb.data.cache.flat_weight_variations`).  They use no random number: every other
branch is the same as without them.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vhbb.core.errors import ConfigError
from vhbb.core.io import atomic_path
from vhbb.data import jes as jesmod

log = logging.getLogger(__name__)

N_ADD_SLOTS = 4
FLAVOURS = ("b", "c", "l")
# the JES sources of toy.jes_sources (the schema's default): name -> relative-uncertainty terms
DEFAULT_JES_SOURCES: dict[str, dict[str, float]] = {
    "absolute": {"constant": 0.015},
    "pt": {"over_pt": 2.0},
    "flavour": {"b": 0.01, "c": 0.015, "l": 0.02},
}


@dataclass(frozen=True)
class ProcessModel:
    """Generator-level description of one physics process of the toy."""

    resonance_mass: float | None  # GeV; None for a non-resonant b-jet pair
    mass_shape: tuple[float, float, float] = (20.0, 2.0, 40.0)  # offset, gamma k, gamma theta
    met_scale: float = 90.0  # exponential slope of the boson pT above the generation threshold
    n_add_mean: float = 0.6  # Poisson mean of additional jets (incl. soft ones below threshold)
    flavour_mix: dict[tuple[str, str], float] = field(default_factory=lambda: {("b", "b"): 1.0})
    soft_activity_mean: float = 3.0
    negative_fraction: float = 0.0  # mean fraction of negative generator weights
    met_balance: float = 1.0  # fraction of the boson recoil carried by the b-jet pair
    eta_width: float = 1.0


PROCESS_MODELS: dict[str, ProcessModel] = {
    "ZH": ProcessModel(
        resonance_mass=125.0,
        met_scale=95.0,
        n_add_mean=0.5,
        soft_activity_mean=2.2,
        negative_fraction=0.10,
    ),
    "VZ": ProcessModel(
        resonance_mass=91.19,
        met_scale=85.0,
        n_add_mean=0.55,
        flavour_mix={("b", "b"): 0.85, ("c", "l"): 0.15},
        soft_activity_mean=2.4,
        negative_fraction=0.0,
    ),
    "Zlf": ProcessModel(
        resonance_mass=None,
        mass_shape=(15.0, 2.0, 38.0),
        met_scale=75.0,
        n_add_mean=0.9,
        flavour_mix={("l", "l"): 0.72, ("c", "l"): 0.28},
        soft_activity_mean=3.4,
        negative_fraction=0.12,
    ),
    "Zhf": ProcessModel(
        resonance_mass=None,
        mass_shape=(15.0, 2.0, 36.0),
        met_scale=78.0,
        n_add_mean=0.9,
        flavour_mix={("b", "b"): 0.40, ("b", "l"): 0.20, ("b", "c"): 0.30, ("c", "c"): 0.10},
        soft_activity_mean=3.2,
        negative_fraction=0.12,
    ),
    "TT": ProcessModel(
        resonance_mass=None,
        mass_shape=(25.0, 3.0, 40.0),
        met_scale=70.0,
        n_add_mean=3.6,
        flavour_mix={("b", "b"): 0.55, ("b", "l"): 0.40, ("b", "c"): 0.05},
        soft_activity_mean=5.5,
        negative_fraction=0.07,
        met_balance=0.75,
        eta_width=1.1,
    ),
    "others": ProcessModel(
        resonance_mass=None,
        mass_shape=(20.0, 2.5, 40.0),
        met_scale=70.0,
        n_add_mean=1.4,
        flavour_mix={("b", "l"): 0.45, ("l", "l"): 0.40, ("c", "l"): 0.15},
        soft_activity_mean=4.0,
        negative_fraction=0.0,
        met_balance=0.85,
    ),
}

# generator-modelling weight variations: name -> the processes it varies (ratio 1 elsewhere)
PTV_VARIATIONS: dict[str, tuple[str, ...]] = {"ptv_zjets": ("Zlf", "Zhf"), "ptv_tt": ("TT",)}
PTV_SIZE = 0.1  # relative size of the pT(V) reweighting at high pT(V)
PTV_RANGE = (200.0, 500.0)  # GeV: the reweighting rises linearly from 0 to PTV_SIZE over it

MET_GEN_MIN = 140.0  # generation threshold on the boson pT (GeV), below the MET preselection
JET_MASS_FRACTION = (0.06, 0.14)  # jet mass / jet energy in the rest frame of the pair


def derive_seed(seed: int, *parts: str | int) -> np.random.SeedSequence:
    """A SeedSequence from the global seed and labels (sample name, file index, ...)."""
    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return np.random.SeedSequence(words)


def _btag(flavour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """b-tag discriminant in [0, 1] by hadron flavour ('b', 'c', 'l')."""
    n = flavour.size
    score = np.empty(n)
    is_b, is_c = flavour == "b", flavour == "c"
    is_l = ~(is_b | is_c)
    score[is_b] = rng.beta(6.0, 1.0, is_b.sum())
    score[is_c] = rng.beta(2.0, 2.0, is_c.sum())
    light = rng.beta(1.0, 8.0, is_l.sum())
    flat = rng.random(is_l.sum()) < 0.03  # mistag tail
    light[flat] = rng.random(flat.sum())
    score[is_l] = light
    return score


def _boost_decay(
    pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, mass: np.ndarray, md: np.ndarray, rng
) -> tuple[np.ndarray, np.ndarray]:
    """Two-body decay of a parent (pt, eta, phi, mass) into daughters of mass ``md`` each,
    isotropic in the parent rest frame.  Returns two (N, 4) arrays of (E, px, py, pz)."""
    n = pt.size
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    energy = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    pstar = np.sqrt(np.maximum(mass**2 / 4 - md**2, 0.0))
    cos_t = rng.uniform(-1, 1, n)
    sin_t = np.sqrt(1 - cos_t**2)
    phis = rng.uniform(-np.pi, np.pi, n)
    d = np.stack([sin_t * np.cos(phis), sin_t * np.sin(phis), cos_t], axis=1) * pstar[:, None]
    estar = np.sqrt(pstar**2 + md**2)
    beta = np.stack([px, py, pz], axis=1) / energy[:, None]
    b2 = np.sum(beta**2, axis=1)
    gamma = energy / mass
    bp = np.sum(beta * d, axis=1)
    coef = np.where(b2 > 0, (gamma - 1) / np.where(b2 > 0, b2, 1), 0.0)
    p1 = d + (coef * bp + gamma * estar)[:, None] * beta
    e1 = gamma * (estar + bp)
    parent = np.stack([energy, px, py, pz], axis=1)
    d1 = np.concatenate([e1[:, None], p1], axis=1)
    return d1, parent - d1


def _to_ptetaphim(v: np.ndarray) -> tuple[np.ndarray, ...]:
    e, px, py, pz = v.T
    pt = np.hypot(px, py)
    eta = np.arcsinh(pz / np.maximum(pt, 1e-9))
    phi = np.arctan2(py, px)
    m = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    return pt, eta, phi, m


def negative_probability(model: ProcessModel, pt_jj: np.ndarray, m_jj: np.ndarray) -> np.ndarray:
    """P(genWeight < 0 | x): rises with pT_jj and m_jj; mean ~ ``model.negative_fraction``."""
    if model.negative_fraction <= 0:
        return np.zeros_like(pt_jj)
    shape = 2.0 / (1.0 + np.exp(-(pt_jj - 230.0) / 70.0))
    shape *= 1.0 + 0.35 * np.tanh((m_jj - 110.0) / 60.0)
    return np.clip(model.negative_fraction * 1.1 * shape, 0.0, 0.45)


def generate_events(
    process: str,
    n: int,
    rng: np.random.Generator,
    *,
    data: bool = False,
    mismodelling_scale: float = 1.0,
    jes: Mapping[str, Mapping[str, float]] | list | None = None,
    truth: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Generate ``n`` events of ``process`` (a key of :data:`PROCESS_MODELS`).

    Returns flat branches (float32 kinematics) plus ``_p_negative`` (the generator-level
    probability of a negative weight, used for the signed-density draw of pseudo-data).
    With ``data=True`` the soft-activity mean is multiplied by ``mismodelling_scale``.
    ``jes``: the JES sources (``toy.jes_sources``, a mapping or the list form of
    :func:`vhbb.data.jes.as_list`; default :data:`DEFAULT_JES_SOURCES`), one up/down pair of
    branches each.  ``truth`` (a dict): receives ``jet_flavour``, the (N, 2) true flavours
    (``'b'``, ``'c'``, ``'l'``) of ``Jet1``/``Jet2`` (no branch holds them).

    Longer than 100 lines on purpose: it is one generative sequence whose random-number calls
    must stay in this order (every toy file, and so every result downstream, depends on it);
    splitting it would hide that order across functions.
    """
    model = PROCESS_MODELS[process]
    # boson (neutrinos) recoil
    pt_v = MET_GEN_MIN + rng.exponential(model.met_scale, n)
    phi_v = rng.uniform(-np.pi, np.pi, n)
    # additional jets (some below the 30 GeV counting threshold, so JES moves them across)
    n_add = np.minimum(rng.poisson(model.n_add_mean, n), N_ADD_SLOTS)
    active = np.arange(N_ADD_SLOTS)[None, :] < n_add[:, None]
    add_pt = np.where(active, 18.0 + rng.exponential(38.0, (n, N_ADD_SLOTS)), 0.0)
    add_eta = np.where(active, rng.normal(0.0, 1.7, (n, N_ADD_SLOTS)), 0.0)
    add_phi = np.where(active, rng.uniform(-np.pi, np.pi, (n, N_ADD_SLOTS)), 0.0)
    add_px = (add_pt * np.cos(add_phi)).sum(axis=1)
    add_py = (add_pt * np.sin(add_phi)).sum(axis=1)
    # the b-jet pair balances the boson (fully for Z+jets and signal) and the additional jets
    balance = model.met_balance + (1 - model.met_balance) * rng.uniform(-1.0, 1.0, n)
    jj_px = -balance * pt_v * np.cos(phi_v) - add_px + rng.normal(0, 10, n)
    jj_py = -balance * pt_v * np.sin(phi_v) - add_py + rng.normal(0, 10, n)
    pt_jj = np.hypot(jj_px, jj_py)
    phi_jj = np.arctan2(jj_py, jj_px)
    eta_jj = rng.normal(0.0, model.eta_width, n)
    if model.resonance_mass is not None:
        m_true = np.full(n, model.resonance_mass)
    else:
        offset, k, theta = model.mass_shape
        m_true = offset + rng.gamma(k, theta, n)
    frac = rng.uniform(*JET_MASS_FRACTION, n)
    md = frac * m_true / 2.0
    j1, j2 = _boost_decay(pt_jj, eta_jj, phi_jj, m_true, md, rng)
    # flavours and b-tag
    combos = list(model.flavour_mix)
    probs = np.array([model.flavour_mix[c] for c in combos], dtype=float)
    pick = rng.choice(len(combos), size=n, p=probs / probs.sum())
    f1 = np.array([c[0] for c in combos])[pick]
    f2 = np.array([c[1] for c in combos])[pick]
    swap = rng.random(n) < 0.5
    f1, f2 = np.where(swap, f2, f1), np.where(swap, f1, f2)

    # detector response: Gaussian core + semileptonic low tail for b/c jets
    def response(flav: np.ndarray) -> np.ndarray:
        r = rng.normal(1.03, 0.14, n)
        tail = (flav != "l") & (rng.random(n) < 0.22)
        r[tail] *= rng.uniform(0.78, 0.97, tail.sum())
        return np.clip(r, 0.3, 2.0)

    r1, r2 = response(f1), response(f2)
    reco1, reco2 = j1 * r1[:, None], j2 * r2[:, None]
    add_r = np.clip(rng.normal(1.0, 0.12, (n, N_ADD_SLOTS)), 0.3, 2.0)
    add_pt_reco = add_pt * add_r
    # MET = true boson pT minus the jet mismeasurement, plus unclustered resolution
    met_px = pt_v * np.cos(phi_v) - (reco1[:, 1] - j1[:, 1]) - (reco2[:, 1] - j2[:, 1])
    met_py = pt_v * np.sin(phi_v) - (reco1[:, 2] - j1[:, 2]) - (reco2[:, 2] - j2[:, 2])
    met_px -= ((add_pt_reco - add_pt) * np.cos(add_phi)).sum(axis=1)
    met_py -= ((add_pt_reco - add_pt) * np.sin(add_phi)).sum(axis=1)
    met_px += rng.normal(0, 12, n)
    met_py += rng.normal(0, 12, n)
    jets = [_to_ptetaphim(reco1), _to_ptetaphim(reco2)]
    btags = [_btag(f1, rng), _btag(f2, rng)]
    # order the two b-jet candidates by pT
    lead_first = jets[0][0] >= jets[1][0]
    out: dict[str, np.ndarray] = {}
    for slot, (a, b) in enumerate([(0, 1), (1, 0)], start=1):
        for q, name in enumerate(("pt", "eta", "phi", "mass")):
            out[f"Jet{slot}_{name}"] = np.where(lead_first, jets[a][q], jets[b][q])
        out[f"Jet{slot}_btag"] = np.where(lead_first, btags[a], btags[b])
    for i in range(N_ADD_SLOTS):
        out[f"AddJet{i + 1}_pt"] = add_pt_reco[:, i]
        out[f"AddJet{i + 1}_eta"] = add_eta[:, i]
        out[f"AddJet{i + 1}_phi"] = add_phi[:, i]
    out["MET_pt"] = np.hypot(met_px, met_py)
    out["MET_phi"] = np.arctan2(met_py, met_px)
    # the true flavour of the two b-jet candidates in pT order (additional jets: light)
    flavour = {1: np.where(lead_first, f1, f2), 2: np.where(lead_first, f2, f1)}
    if truth is not None:
        truth["jet_flavour"] = np.stack([flavour[1], flavour[2]], axis=1)
    light = np.full(n, "l")
    # JES variations per source of every jet-dependent column, propagated to MET
    sources = jesmod.as_mapping(DEFAULT_JES_SOURCES if jes is None else jes)
    for source, var, sign in jesmod.signed_variations(sources):
        spec = sources[source]
        dpx = np.zeros(n)
        dpy = np.zeros(n)
        for slot in (1, 2):
            pt = out[f"Jet{slot}_pt"]
            scale = 1.0 + sign * jesmod.relative_uncertainty(spec, pt, flavour[slot])
            out[f"Jet{slot}_pt_{var}"] = pt * scale
            out[f"Jet{slot}_mass_{var}"] = out[f"Jet{slot}_mass"] * scale
            dpx += pt * (scale - 1) * np.cos(out[f"Jet{slot}_phi"])
            dpy += pt * (scale - 1) * np.sin(out[f"Jet{slot}_phi"])
        for i in range(1, N_ADD_SLOTS + 1):
            pt = out[f"AddJet{i}_pt"]
            scale = 1.0 + sign * jesmod.relative_uncertainty(spec, pt, light)
            out[f"AddJet{i}_pt_{var}"] = pt * scale
            dpx += pt * (scale - 1) * np.cos(out[f"AddJet{i}_phi"])
            dpy += pt * (scale - 1) * np.sin(out[f"AddJet{i}_phi"])
        mx = out["MET_pt"] * np.cos(out["MET_phi"]) - dpx
        my = out["MET_pt"] * np.sin(out["MET_phi"]) - dpy
        out[f"MET_pt_{var}"] = np.hypot(mx, my)
        out[f"MET_phi_{var}"] = np.arctan2(my, mx)
    sa_mean = model.soft_activity_mean * (1.0 + 0.002 * (pt_v - MET_GEN_MIN))
    if data:
        sa_mean = sa_mean * mismodelling_scale
    out["SoftActivityJetNjets5"] = rng.poisson(sa_mean).astype(np.int32)
    out = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}
    out["_p_negative"] = negative_probability(model, pt_jj, m_true)
    return out


def ptv_ratio(met_pt: np.ndarray, sign: float) -> np.ndarray:
    """The pT(V) reweighting ratio ``1 + sign * PTV_SIZE * clip((met_pt - lo) / (hi - lo), 0, 1)``
    (``sign`` +1: up, -1: down), float64."""
    lo, hi = PTV_RANGE
    ramp = np.clip((np.asarray(met_pt, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 + sign * PTV_SIZE * ramp


def weight_variation_branches(process: str, met_pt: np.ndarray) -> dict[str, np.ndarray]:
    """The ``weight_<name>Up/Down`` ratio branches (float32) of :data:`PTV_VARIATIONS` for the
    events of ``process``: the pT(V) ratio where the variation acts on it, 1 elsewhere."""
    out: dict[str, np.ndarray] = {}
    for name, procs in PTV_VARIATIONS.items():
        for suffix, sign in (("Up", 1.0), ("Down", -1.0)):
            ratio = ptv_ratio(met_pt, sign) if process in procs else np.ones(len(met_pt))
            out[f"weight_{name}{suffix}"] = ratio.astype(np.float32)
    return out


def generate_mc_file(
    process: str, n: int, seed: np.random.SeedSequence, file_index: int, jes=None
) -> dict[str, np.ndarray]:
    """One MC file: ``n`` events with signed generator weights and (run, lumi, event) keys.

    Event numbers restart in every file (as in real production); the luminosity block encodes
    the file, so the key (sample, run, lumi, event) is unique.  The weight-variation branches
    (:func:`weight_variation_branches`) are added last and draw no random number.
    """
    rng = np.random.default_rng(seed)
    ev = generate_events(process, n, rng, jes=jes)
    p_neg = ev.pop("_p_negative")
    sign = np.where(rng.random(n) < p_neg, -1.0, 1.0)
    ev["genWeight"] = (sign * 1000.0).astype(np.float32)  # NLO-like +-|w| with constant |w|
    ev.update(_keys(n, run=1, file_index=file_index))
    ev.update(weight_variation_branches(process, ev["MET_pt"]))
    return ev


def _keys(n: int, run: int, file_index: int, events_per_lumi: int = 1000) -> dict[str, np.ndarray]:
    event = np.arange(1, n + 1, dtype=np.uint64)
    lumi = (file_index * 100_000 + 1 + (np.arange(n) // events_per_lumi)).astype(np.uint32)
    return {"run": np.full(n, run, dtype=np.uint32), "luminosityBlock": lumi, "event": event}


def generate_data_file(
    expected: dict[str, float],
    seed: np.random.SeedSequence,
    file_index: int,
    mismodelling_scale: float = 1.0,
    jes=None,
) -> dict[str, np.ndarray]:
    """One pseudo-data file drawn from the signed MC density.

    ``expected`` maps process -> expected number of data events in this file (sigma * L * true
    scale factor / number of data files).  For each process, candidates x ~ g(x) from the
    generator are accepted with probability 1 - 2 P(w<0|x), which is exactly the signed density
    (positive minus negative part), and the count is Poisson.
    """
    rng = np.random.default_rng(seed)
    parts: list[dict[str, np.ndarray]] = []
    for process, mean in sorted(expected.items()):
        want = rng.poisson(mean)
        got: list[dict[str, np.ndarray]] = []
        n_have = 0
        while n_have < want:
            batch = max(int(1.3 * (want - n_have)) + 16, 64)
            ev = generate_events(
                process, batch, rng, data=True, mismodelling_scale=mismodelling_scale, jes=jes
            )
            keep = rng.random(batch) < 1.0 - 2.0 * ev.pop("_p_negative")
            ev = {k: v[keep] for k, v in ev.items()}
            got.append(ev)
            n_have += int(keep.sum())
        if got:
            merged = {k: np.concatenate([g[k] for g in got])[:want] for k in got[0]}
            parts.append(merged)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    n = len(data.get("MET_pt", []))
    order = rng.permutation(n)  # mix processes
    data = {k: v[order] for k, v in data.items()}
    data["genWeight"] = np.ones(n, dtype=np.float32)
    data.update(_keys(n, run=300_000 + file_index, file_index=file_index))
    return data


FORMATS = ("ttree", "rntuple")


def write_tree(
    path: str | Path,
    branches: Mapping[str, np.ndarray],
    compression: str = "lz4",
    format: str = "ttree",
    name: str = "Events",
) -> None:
    """Write ``branches`` as a TTree or an RNTuple ``name`` atomically (no half-written file).

    The format is explicit: since uproot 5.7, ``fout[name] = {...}`` writes an *RNTuple*, so a
    TTree is made with ``mktree`` + ``extend`` and an RNTuple with ``mkrntuple`` + ``extend``.
    ``branches`` may hold jagged awkward arrays (written with a counter branch in a TTree).
    """
    import uproot

    if format not in FORMATS:
        raise ConfigError(
            f"config error at 'toy.format': unknown format '{format}'; use one of "
            f"{', '.join(FORMATS)}"
        )
    codec = {"lz4": uproot.LZ4(1), "zstd": uproot.ZSTD(1), "zlib": uproot.ZLIB(1)}[compression]
    data = dict(branches)
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp, compression=codec) as fout:
            if format == "ttree":
                types = {k: _branch_type(v) for k, v in data.items()}
                fout.mktree(name, types).extend(data)
            else:
                fout.mkrntuple(name, _rntuple_types(data)).extend(data)


def _branch_type(values):  # type: ignore[no-untyped-def]
    """The ``mktree`` type of one branch: a numpy dtype, or the awkward type of a jagged one."""
    if isinstance(values, np.ndarray):
        return values.dtype if values.ndim == 1 else np.dtype((values.dtype, values.shape[1:]))
    return values.type.content  # awkward array: drop the outer (entries) dimension


def _rntuple_types(data: Mapping):  # type: ignore[no-untyped-def]
    import awkward as ak

    return ak.zip(
        {k: ak.Array(v) if not isinstance(v, np.ndarray) else v for k, v in data.items()},
        depth_limit=1,
    ).layout.form


def run_toy_file(
    path: str | Path,
    *,
    sample: str,
    file_index: int,
    seed: int,
    compression: str,
    jes_sources: Mapping[str, Mapping[str, float]] | list,
    process: str | None = None,
    n_events: int = 0,
    data_expected: Mapping[str, float] | None = None,
    mismodelling_scale: float = 1.0,
    format: str = "ttree",
) -> int:
    """Write one toy file (MC when ``process`` is given, else pseudo-data); return its size.

    ``format``: ``ttree`` or ``rntuple`` (``toy.format``); the values are the same either way.
    ``jes_sources``: ``toy.jes_sources`` (a mapping, or the order-keeping list form of
    :func:`vhbb.data.jes.as_list` that :func:`file_spec` gives).
    """
    ss = derive_seed(seed, sample, file_index)
    jes = jesmod.as_mapping(jes_sources)
    if data_expected is None:
        if process is None:
            raise ValueError("an MC toy file needs a process")
        branches = generate_mc_file(process, n_events, ss, file_index, jes=jes)
    else:
        branches = generate_data_file(
            dict(data_expected), ss, file_index, mismodelling_scale, jes=jes
        )
    write_tree(path, branches, compression, format=format)
    n = len(branches["event"])
    log.info("%s: wrote %d events to %s", sample, n, path)
    return n


def file_spec(config: Mapping, sample: str, file_index: int) -> dict:
    """Everything one toy file depends on (the rule's params: a change reruns that file only)."""
    spec = config["samples"]["list"][sample]
    toy_cfg = config["toy"]
    if not jesmod.as_mapping(toy_cfg["jes_sources"]):
        raise ConfigError(
            "config error at 'toy.jes_sources': no JES source left (each is null); give at "
            "least one (the flat layout needs the JES branches of one source at least)"
        )
    base = {
        "sample": sample,
        "file_index": int(file_index),
        "seed": int(config["seed"]),
        "compression": toy_cfg["compression"],
        "format": toy_cfg.get("format", "ttree"),
        # a list keeps the sources' order through the params' canonical (key-sorted) JSON
        "jes_sources": jesmod.as_list(toy_cfg["jes_sources"]),
    }
    processes = config["samples"]["processes"]
    if processes[spec["process"]]["role"] == "data":
        n_files = toy_cfg["data_files"]
        truth = toy_cfg["truth"]
        expected: dict[str, float] = {}
        for _name, other in config["samples"]["list"].items():
            proc = other["process"]
            role = processes[proc]["role"]
            if role == "data" or other.get("source") != "toy":
                continue
            factor = truth["scale_factors"].get(proc, 1.0)
            if role == "signal":
                factor *= truth["mu"]
            elif role == "resonant":
                factor *= truth["mu_vz"]
            sigma_l = other["xsec_pb"] * 1000.0 * config["lumi"]
            expected[proc] = expected.get(proc, 0.0) + sigma_l * factor / n_files
        mism = toy_cfg["mismodelling"]
        base["data_expected"] = dict(sorted(expected.items()))
        base["mismodelling_scale"] = float(mism["scale"]) if mism["enabled"] else 1.0
    else:
        n_files = toy_cfg["files_per_sample"]
        if spec["process"] not in toy_cfg["events"]:
            raise ConfigError(
                f"config error at 'toy.events': no event count for process "
                f"'{spec['process']}' (toy sample '{sample}'); add toy.events.{spec['process']}"
            )
        total = int(toy_cfg["events"][spec["process"]])
        base["process"] = spec["process"]
        base["n_events"] = total // n_files + (1 if file_index < total % n_files else 0)
    return base
