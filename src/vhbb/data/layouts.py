"""Declarative input layouts: read ntuples of another schema by configuration alone.

A layout of ``kind: custom`` (``samples.layouts.<name>``) says where every ingredient is::

    mine:
      kind: custom
      tree: analysis                       # the TTree or RNTuple
      keys: {run: run, luminosityBlock: lumi, event: evt}   # branch names (or a constant int)
      jets:                                # a jagged collection: (pt, eta, phi, mass) ...
        px: Jet_Px                         # ... or (px, py, pz, E), converted with `vector`
        py: Jet_Py
        pz: Jet_Pz
        E: Jet_E
        btag: Jet_btag                     # optional (0 when absent)
        fields: {flav: Jet_hadronFlavour}  # extra per-jet fields (for corrections)
      pair: {choice: btag}                 # btag | pt | index (index: [hJidx] or [i0, i1])
      met: {px: MET_px, py: MET_py}        # or {pt: ..., phi: ...}
      soft_activity: nSoft                 # expression (optional, 0 when absent)
      columns: {h_mass: H_mass}            # extra cached columns: safe expressions
      weight: genWeight * puWeight         # MC event weight: safe expression over branches
      normalisation: {from: runs, tree: Runs, branch: genEventSumw}   # or events / value
      jes:                                 # JES sources from branches (absent: parametrised)
        from: branches
        sources:                           # one entry per source (one fit parameter each)
          absolute:
            up: {pt: Jet_pt_jesAbsoluteUp, mass: Jet_mass_jesAbsoluteUp,
                 met: {pt: MET_pt_jesAbsoluteUp, phi: MET_phi_jesAbsoluteUp}}
            down: {pt: Jet_pt_jesAbsoluteDown}    # mass and met are optional
          flavorQCD:
            up: {pt: Jet_pt_jesFlavorQCDUp}
            down: {pt: Jet_pt_jesFlavorQCDDown}

Jets pass the layout's ``jet_pt_min`` / ``jet_eta_max`` (and ``jet_id``, a branch, with
``jet_id_min``).  The b-jet pair is the two selected jets of highest b-tag (``btag``) or pT
(``pt``), or the jets named by index branches (``index``, indices into the whole collection; a
negative index means no pair, an index past the collection is an error).  Additional jets are
the other selected jets (b-tag or pT order, or file order for ``index``).  The ``nanoaod`` kind is
the preset :func:`nanoaod_preset` of this one (the same output as before).

The JES variations (MC only) come in named sources, ``jes_<source>Up`` / ``jes_<source>Down``
each (:mod:`vhbb.data.jes`).  They are parametrised by default: every selected jet scaled by
``1 +- (constant + over_pt / pT)`` per source of ``jes_sources`` (default one source ``total``,
``0.015 + 1.5 / pT``; :func:`vhbb.data.cache.scale_jes`; the toy's flavour terms need the
true jet flavour and are not available to a layout).  With ``jes: {from: branches, sources:
{<name>: {up: ..., down: ...}}}`` (:func:`jes_sides`; the single-source form ``jes: {from:
branches, up: ..., down: ...}`` is the source ``total``) they are read from branches
instead, e.g. NanoAOD-tools' ``Jet_pt_jesAbsoluteUp``: per side the varied jet pT (``pt``, a
per-jet branch of the jet collection), optionally the varied jet mass (``mass``; absent: the
nominal mass scaled by the ratio of varied to nominal pT, as the parametrised variation does)
and the varied MET (``met``: ``{pt, phi}`` or ``{px, py}``; absent: the nominal MET minus the
vector sum of the pT shifts of the pair and the additional jets, as the parametrised variation
propagates them, :func:`vhbb.data.cache.branch_jes`).  In both cases the jets keep the identity
they have in the nominal selection (the same pair and additional jets, selected with the
nominal pT); only their pT and mass change, and ``n_add_jets`` counts them with
``add_jet_pt_min`` on the varied pT.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vhbb.core.errors import ConfigError, DataError, InputError
from vhbb.data import expressions
from vhbb.data import jes as jesmod

KEY_COLUMNS = ("run", "luminosityBlock", "event")
JET_FIELDS = ("pt", "eta", "phi", "mass", "btag")
PAIR_CHOICES = ("btag", "pt", "index")
JET_SETS = ("pair", "selected", "all")
# the sides of a JES source read from branches (``jes.from: branches``): key -> variation side
JES_SIDES = (("Up", "up"), ("Down", "down"))
JES_FROM = ("parametrised", "branches")
# the parametrised JES sources of a layout without ``jes_sources`` (the schema's default)
DEFAULT_JES_SOURCES = {"total": {"constant": 0.015, "over_pt": 1.5}}
LEGACY_SOURCE = "total"  # the source of the single-source form jes: {from: branches, up, down}
_JES_FIELD = "jes:"  # prefix of the internal per-jet fields holding the varied quantities
N_ADD_SLOTS = 6  # additional-jet slots of the standard structure (vhbb.data.cache)


@dataclass
class Reduced:
    """One chunk reduced to the standard pieces (every array over the events with a pair,
    except ``gen_weight`` and ``has_pair``, which cover the whole chunk).

    The jets are given as awkward records (``pair``, ``add``, ``all_jets``) or, by the fast
    reduction, as numpy arrays (``padded``: (N, 2) pair and (N, :data:`N_ADD_SLOTS`) additional
    jets, 0 in empty slots) with the awkward records built on first use (``lazy_jets``; the
    corrections need them).
    """

    pair: Any  # awkward (N, 2) records pt, eta, phi, mass, btag (+ fields)
    add: Any  # awkward jagged records, the additional jets (not clipped)
    all_jets: Any  # awkward jagged records, the whole collection
    met_pt: np.ndarray
    met_phi: np.ndarray
    soft_activity: np.ndarray
    has_pair: np.ndarray
    gen_weight: np.ndarray
    keys: dict[str, np.ndarray]
    namespace: dict[str, np.ndarray] = field(default_factory=dict)  # event-level branches
    padded: dict[str, np.ndarray] | None = None  # pair_<q> (N, 2), add_<q> (N, K), float64
    lazy_jets: Callable[[], tuple[Any, Any, Any]] | None = None  # -> (pair, add, all_jets)
    # JES variations read from branches (empty: parametrised): variation -> pair_pt (N, 2),
    # add_pt (N, K), optionally pair_mass (N, 2) and met_pt, met_phi (N,), float64
    jes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # in source order

    def _awkward(self) -> None:
        if self.pair is None and self.lazy_jets is not None:
            self.pair, self.add, self.all_jets = self.lazy_jets()
            self.lazy_jets = None

    def jet_set(self, name: str) -> Any:
        import awkward as ak

        self._awkward()
        if name == "pair":
            return self.pair
        if name == "selected":
            return ak.concatenate([self.pair, self.add], axis=1)
        return self.all_jets


# ---------------------------------------------------------------------------- presets
def nanoaod_preset(layout: Mapping[str, Any]) -> dict[str, Any]:
    """The ``nanoaod`` kind as a custom layout (identical cached columns)."""
    out = {
        k: v
        for k, v in layout.items()
        if k not in ("kind", "btag_branch", "soft_activity_branch", "weight_branch")
    }
    out.update(
        {
            "kind": "custom",
            "jets": {
                "pt": "Jet_pt",
                "eta": "Jet_eta",
                "phi": "Jet_phi",
                "mass": "Jet_mass",
                "btag": layout["btag_branch"],
            },
            "pair": {"choice": "btag"},
            "met": {"pt": "MET_pt", "phi": "MET_phi"},
            "soft_activity": layout["soft_activity_branch"],
            "weight": layout["weight_branch"],
        }
    )
    if layout.get("jet_id_min", 0) > 0:
        out["jets"]["jet_id"] = "Jet_jetId"
    return out


# ---------------------------------------------------------------------------- branches
def jet_branches(jets: Mapping[str, Any]) -> dict[str, str]:
    """Per-jet quantity -> branch (four-vector as pt/eta/phi/mass or px/py/pz/E)."""
    if all(k in jets for k in ("pt", "eta", "phi", "mass")):
        out = {k: jets[k] for k in ("pt", "eta", "phi", "mass")}
    elif all(k in jets for k in ("px", "py", "pz", "E")):
        out = {k: jets[k] for k in ("px", "py", "pz", "E")}
    else:
        raise ConfigError(
            "config error at 'samples.layouts.<name>.jets': give the jet four-vector as "
            f"pt, eta, phi, mass or as px, py, pz, E (got {', '.join(sorted(jets)) or 'nothing'})"
        )
    for key in ("btag", "jet_id"):
        if jets.get(key):
            out[key] = jets[key]
    for name, branch in (jets.get("fields") or {}).items():
        out[f"field:{name}"] = branch
    return out


def met_branches(met: Mapping[str, str]) -> dict[str, str]:
    if "pt" in met and "phi" in met:
        return {"pt": met["pt"], "phi": met["phi"]}
    if "px" in met and "py" in met:
        return {"px": met["px"], "py": met["py"]}
    raise ConfigError(
        "config error at 'samples.layouts.<name>.met': give MET as {pt, phi} or {px, py} "
        f"(got {', '.join(sorted(met)) or 'nothing'})"
    )


def _jes_from(layout: Mapping[str, Any]) -> str:
    source = (layout.get("jes") or {}).get("from", "parametrised")
    if source not in JES_FROM:
        raise ConfigError(
            f"config error at 'samples.layouts.<name>.jes.from': unknown '{source}'; use one of "
            f"{', '.join(JES_FROM)}"
        )
    return str(source)


def _branch_sources(layout: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``jes.from: branches``: source -> (its layout key, ``{up: ..., down: ...}``); the
    single-source form ``jes: {up, down}`` is the source ``total`` (key ``jes``)."""
    jes = layout.get("jes") or {}
    if jes.get("sources"):
        if "up" in jes or "down" in jes:
            raise ConfigError(
                "config error at 'samples.layouts.<name>.jes': give either 'sources' or the "
                "single-source 'up' / 'down', not both"
            )
        named = jesmod.as_mapping(jes["sources"])
        if not named:
            raise ConfigError(
                "config error at 'samples.layouts.<name>.jes.sources': no JES source left "
                "(each is null); give at least one"
            )
        jesmod.check_names(named, "samples.layouts.<name>.jes.sources")
        return {n: (f"jes.sources.{n}", dict(spec)) for n, spec in named.items()}
    return {LEGACY_SOURCE: ("jes", {k: jes[k] for k in ("up", "down") if k in jes})}


def parametrised_sources(layout: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The parametrised JES sources of a layout (``jes_sources``, in order; default
    :data:`DEFAULT_JES_SOURCES`); a source with flavour terms is a config error (a layout has
    no true jet flavour)."""
    raw = layout.get("jes_sources")
    sources = jesmod.as_mapping(DEFAULT_JES_SOURCES if raw is None else raw)
    if not sources:
        raise ConfigError(
            "config error at 'samples.layouts.<name>.jes_sources': no JES source left (each "
            "is null); give at least one"
        )
    jesmod.check_names(sources, "samples.layouts.<name>.jes_sources")
    for name, spec in sources.items():
        if jesmod.needs_flavour(spec):
            raise ConfigError(
                f"config error at 'samples.layouts.<name>.jes_sources.{name}': flavour terms "
                "(b, c, l) need the true jet flavour, which only the toy knows; use constant "
                "and over_pt (or read the source from branches: jes.from: branches)"
            )
    return {n: dict(spec) for n, spec in sources.items()}


def jes_source_names(layout: Mapping[str, Any]) -> list[str]:
    """The JES sources a custom (or nanoaod) layout gives MC, in order."""
    if _jes_from(layout) == "branches":
        return list(_branch_sources(layout))
    return list(parametrised_sources(layout))


def jes_sides(layout: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The JES variations read from branches: variation key (``jes_<source>Up`` / ``Down``) ->
    the side's branches ``{pt, mass (optional), met (optional: {pt, phi} or {px, py})}``, in
    source order; empty when the variations are parametrised (``jes`` absent or ``jes.from:
    parametrised``)."""
    if _jes_from(layout) == "parametrised":
        return {}
    out = {}
    for source, (key, sides) in _branch_sources(layout).items():
        for suffix, side in JES_SIDES:
            spec = sides.get(side) or {}
            if not isinstance(spec.get("pt"), str):
                raise ConfigError(
                    f"config error at 'samples.layouts.<name>.{key}.{side}': 'from: branches' "
                    f"needs the branch of the varied jet pT ({side}: {{pt: Jet_pt_jesTotal"
                    f"{side.capitalize()}}})"
                )
            if spec.get("met") is not None:
                met_branches(spec["met"])  # {pt, phi} or {px, py}
            out[jesmod.variation(source, suffix)] = dict(spec)
    return out


def jes_branches(layout: Mapping[str, Any]) -> list[str]:
    """The branches of the JES variations read from branches (none when parametrised)."""
    names: list[str] = []
    for spec in jes_sides(layout).values():
        names += [spec[q] for q in ("pt", "mass") if spec.get(q)]
        if spec.get("met") is not None:
            names += list(met_branches(spec["met"]).values())
    return list(dict.fromkeys(names))


def jes_keys(layout: Mapping[str, Any]) -> dict[str, str]:
    """Branch of the JES variations -> the layout key naming it (e.g. ``jes.up.pt``,
    ``jes.sources.absolute.down.met.phi``), for the missing-branch message."""
    out: dict[str, str] = {}
    if _jes_from(layout) == "parametrised":
        return out
    sides = jes_sides(layout)
    for source, (key, _) in _branch_sources(layout).items():
        for suffix, side in JES_SIDES:
            spec = sides.get(jesmod.variation(source, suffix)) or {}
            for q in ("pt", "mass"):
                if spec.get(q):
                    out.setdefault(spec[q], f"{key}.{side}.{q}")
            for q, branch in met_branches(spec["met"]).items() if spec.get("met") else ():
                out.setdefault(branch, f"{key}.{side}.met.{q}")
    return out


def _with_jes_fields(layout: Mapping[str, Any], sides: Mapping[str, Any]) -> Mapping[str, Any]:
    """``layout`` with the varied per-jet branches as internal jet fields ``jes:<var>:<q>`` (so
    both reductions carry them with the jets they belong to)."""
    if not sides:
        return layout
    jets = dict(layout["jets"])
    fields = dict(jets.get("fields") or {})
    for var, spec in sides.items():
        for q in ("pt", "mass"):
            if spec.get(q):
                fields[f"{_JES_FIELD}{var}:{q}"] = spec[q]
    jets["fields"] = fields
    return {**layout, "jets": jets}


def _index_branches(layout: Mapping[str, Any]) -> list[str]:
    pair = layout.get("pair") or {}
    if pair.get("choice", "btag") != "index":
        return []
    index = pair.get("index")
    if isinstance(index, str):
        index = [index]
    if not index or len(index) not in (1, 2):
        raise ConfigError(
            "config error at 'samples.layouts.<name>.pair.index': choice 'index' needs one "
            "branch with two indices per event (e.g. [hJidx]) or two branches ([i0, i1])"
        )
    return list(index)


def expression_branches(layout: Mapping[str, Any], is_mc: bool) -> set[str]:
    """Branches named by the layout's expressions (soft activity, extra columns, weight)."""
    exprs = [str(v) for v in (layout.get("columns") or {}).values()]
    if layout.get("soft_activity") is not None:
        exprs.append(str(layout["soft_activity"]))
    if is_mc:
        exprs.append(str(layout.get("weight", "genWeight")))
    out: set[str] = set()
    for expr in exprs:
        out |= expressions.names(expr)
    return out


def custom_branches(layout: Mapping[str, Any], is_mc: bool, extra: Sequence[str] = ()) -> list[str]:
    """Every branch a custom layout reads (``extra``: more event-level branches)."""
    names: list[str] = []
    for key in KEY_COLUMNS:
        value = (layout.get("keys") or {}).get(key, key)
        if isinstance(value, str):
            names.append(value)
    names += list(jet_branches(layout.get("jets") or {}).values())
    names += list(met_branches(layout.get("met") or {}).values())
    names += _index_branches(layout)
    names += sorted(expression_branches(layout, is_mc) | set(extra))
    if is_mc:
        names += jes_branches(layout)
    return list(dict.fromkeys(names))


def check_branches(available: list[str], path: str, needed: list[str]) -> None:
    """Raise :class:`InputError` naming the first missing branch and its closest names."""
    have = set(available)
    for name in needed:
        if name not in have:
            close = difflib.get_close_matches(name, sorted(have), n=3)
            raise InputError(
                f"branch '{name}' missing in {path}"
                + (f" (close matches: {', '.join(close)})" if close else "")
                + "; check the sample's layout (samples.layouts) or the input file."
            )


# ---------------------------------------------------------------------------- reduction
def _np(x) -> np.ndarray:  # type: ignore[no-untyped-def]
    import awkward as ak

    return np.asarray(ak.to_numpy(x), dtype=np.float64)


def _jagged(x):  # type: ignore[no-untyped-def]
    """A per-jet branch as a jagged awkward array (fixed-size arrays made variable)."""
    import awkward as ak

    arr = ak.Array(x)
    if arr.ndim != 2:
        raise DataError(f"a jet branch must hold one value per jet (got type {arr.type})")
    return ak.from_regular(arr, axis=1) if isinstance(arr.layout, ak.contents.RegularArray) else arr


def build_jets(arrays: Mapping[str, Any], jets_cfg: Mapping[str, Any]):  # type: ignore[no-untyped-def]
    """Jets as awkward records (pt, eta, phi, mass, btag, jet_id, and the extra fields)."""
    import awkward as ak
    import vector

    branches = jet_branches(jets_cfg)
    cols = {k: _jagged(arrays[b]) for k, b in branches.items()}
    if "pt" in cols:
        fields = {k: ak.values_astype(cols[k], np.float64) for k in ("pt", "eta", "phi", "mass")}
    else:
        counts = ak.num(cols["px"])
        flat = {
            k: np.asarray(ak.flatten(cols[k]), dtype=np.float64) for k in ("px", "py", "pz", "E")
        }
        v = vector.array({"px": flat["px"], "py": flat["py"], "pz": flat["pz"], "E": flat["E"]})
        fields = {
            q: ak.unflatten(np.asarray(getattr(v, q), dtype=np.float64), counts)
            for q in ("pt", "eta", "phi", "mass")
        }
    like = fields["pt"]
    fields["btag"] = ak.values_astype(cols["btag"], np.float64) if "btag" in cols else like * 0.0
    if "jet_id" in cols:
        fields["jet_id"] = cols["jet_id"]
    for key, values in cols.items():
        if key.startswith("field:"):
            fields[key.split(":", 1)[1]] = values
    return ak.zip(fields)


def _pair_indices(
    arrays: Mapping[str, Any], layout: Mapping[str, Any], n_jets: np.ndarray, path: str, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) jet indices from the index branches and the mask of events with a pair."""
    import awkward as ak

    names = _index_branches(layout)
    if len(names) == 1:
        raw = ak.Array(arrays[names[0]])
        if raw.ndim != 2 or not ak.all(ak.num(raw) >= 2):
            raise DataError(
                f"index branch '{names[0]}' of {path} must hold two jet indices per event"
            )
        idx = np.stack([_np(raw[:, 0]), _np(raw[:, 1])], axis=1)
    else:
        idx = np.stack([_np(arrays[names[0]]), _np(arrays[names[1]])], axis=1)
    idx = idx.astype(np.int64)
    has_pair = (idx >= 0).all(axis=1)
    over = has_pair & (idx >= n_jets[:, None]).any(axis=1)
    if over.any():
        i = int(np.flatnonzero(over)[0])
        raise DataError(
            f"jet index out of range in {path} (entry {first + i}): the index branch(es) "
            f"{', '.join(names)} point at jets {idx[i].tolist()} but the event has "
            f"{int(n_jets[i])} jets; check samples.layouts.<name>.pair.index and the jet "
            "collection it indexes"
        )
    return idx, has_pair


def reduce_custom(
    arrays: Mapping[str, Any],
    layout: Mapping[str, Any],
    is_mc: bool,
    path: str = "<input>",
    first: int = 0,
    extra: Sequence[str] = (),
    variations: bool | None = None,
) -> Reduced:
    """Reduce one chunk of a custom layout (``first``: the entry number of its first event;
    ``extra``: more event-level branches to keep in the namespace, e.g. correction inputs;
    ``variations``: read the JES variations of ``jes: {from: branches}`` into ``Reduced.jes``,
    by default for MC only).

    Jets given as (pt, eta, phi, mass) in plain jagged branches with a pair chosen by b-tag or
    pT take a numpy path (:func:`_fast_jets`; the same values as the awkward one, which the
    other layouts take and which builds the awkward jet records when a correction needs them).
    """
    import awkward as ak

    sides = jes_sides(layout) if (is_mc if variations is None else variations) else {}
    jet_layout = _with_jes_fields(layout, sides)
    choice = (layout.get("pair") or {}).get("choice", "btag")
    fast = _fast_jets(arrays, jet_layout, choice) if choice in ("btag", "pt") else None
    padded: dict[str, np.ndarray] | None = None
    lazy = None
    jes: dict[str, dict[str, np.ndarray]] = {}
    if fast is None:
        if sides:
            _check_jet_counts(arrays, jet_layout, path, first)
        pair, add, all_jets, has_pair, n = _awkward_jets(arrays, jet_layout, path, first)
        if sides:
            for var, spec in sides.items():
                jes[var] = {"pair_pt": two(pair[f"{_JES_FIELD}{var}:pt"])}
                jes[var]["add_pt"] = pad(add[f"{_JES_FIELD}{var}:pt"], N_ADD_SLOTS)
                if spec.get("mass"):
                    jes[var]["pair_mass"] = two(pair[f"{_JES_FIELD}{var}:mass"])
            pair, add, all_jets = (_drop_jes_fields(x) for x in (pair, add, all_jets))
    else:
        padded, has_pair, n = fast
        pair = add = all_jets = None
        for var, spec in sides.items():
            jes[var] = {
                "pair_pt": padded.pop(f"pair_{_JES_FIELD}{var}:pt"),
                "add_pt": padded.pop(f"add_{_JES_FIELD}{var}:pt"),
            }
            if spec.get("mass"):
                jes[var]["pair_mass"] = padded.pop(f"pair_{_JES_FIELD}{var}:mass")
        for key in [k for k in padded if _JES_FIELD in k]:
            del padded[key]

        def lazy():  # type: ignore[no-untyped-def]
            return _awkward_jets(arrays, layout, path, first)[:3]

    met_pt, met_phi = _read_met(arrays, layout["met"])
    for var, spec in sides.items():
        if spec.get("met") is not None:
            vpt, vphi = _read_met(arrays, spec["met"])
            jes[var]["met_pt"], jes[var]["met_phi"] = vpt[has_pair], vphi[has_pair]
    ns = {name: arrays[name] for name in _event_names(layout, is_mc, arrays, extra)}
    ns = {k: _np(v) for k, v in ns.items()}
    soft = (
        np.asarray(expressions.evaluate(str(layout["soft_activity"]), ns), dtype=np.float64)
        if layout.get("soft_activity") is not None
        else np.zeros(n)
    )
    soft = np.broadcast_to(soft, (n,))
    gen_weight = np.ones(n)
    if is_mc:
        gen_weight = np.broadcast_to(
            np.asarray(expressions.evaluate(str(layout.get("weight", "genWeight")), ns), float),
            (n,),
        ).astype(np.float64)
    keys = {}
    for key in KEY_COLUMNS:
        value = (layout.get("keys") or {}).get(key, key)
        keys[key] = (
            ak.to_numpy(arrays[value]) if isinstance(value, str) else np.full(n, int(value))
        )[has_pair]
    return Reduced(
        pair=pair,
        add=add,
        all_jets=all_jets,
        met_pt=met_pt[has_pair],
        met_phi=met_phi[has_pair],
        soft_activity=np.asarray(soft)[has_pair],
        has_pair=np.asarray(has_pair, dtype=bool),
        gen_weight=gen_weight,
        keys=keys,
        namespace={k: v[has_pair] for k, v in ns.items()},
        padded=padded,
        lazy_jets=lazy,
        jes=jes,
    )


def _read_met(arrays: Mapping[str, Any], met_cfg: Mapping[str, str]) -> tuple[np.ndarray, ...]:
    """(pt, phi) of MET given as {pt, phi} or {px, py} branches, float64."""
    met = met_branches(met_cfg)
    if "pt" in met:
        return _np(arrays[met["pt"]]), _np(arrays[met["phi"]])
    mx, my = _np(arrays[met["px"]]), _np(arrays[met["py"]])
    return np.hypot(mx, my), np.arctan2(my, mx)


def _drop_jes_fields(records):  # type: ignore[no-untyped-def]
    """Jet records without the internal ``jes:`` fields (the corrections see the others)."""
    return records[[f for f in records.fields if not f.startswith(_JES_FIELD)]]


def _check_jet_counts(
    arrays: Mapping[str, Any], layout: Mapping[str, Any], path: str, first: int = 0
) -> None:
    """Every per-jet branch (the JES ones included) holds one value per jet of the collection."""
    import awkward as ak

    branches = list(dict.fromkeys(jet_branches(layout["jets"]).values()))
    ref = ak.to_numpy(ak.num(_jagged(arrays[branches[0]])))
    for branch in branches[1:]:
        got = ak.to_numpy(ak.num(_jagged(arrays[branch])))
        if not np.array_equal(got, ref):
            i = int(np.flatnonzero(got != ref)[0])
            raise DataError(
                f"jet branch '{branch}' of {path} holds {int(got[i])} values in an event where "
                f"'{branches[0]}' holds {int(ref[i])} (entry {first + i}): a per-jet branch "
                "(jets, jes.up/down.pt/mass) must hold one value per jet of the collection"
            )


def _awkward_jets(
    arrays: Mapping[str, Any], layout: Mapping[str, Any], path: str, first: int
) -> tuple[Any, Any, Any, np.ndarray, int]:
    """(pair, additional jets, all jets of the events with a pair, has_pair, number of events)
    as awkward records (every layout and pair choice)."""
    import awkward as ak

    jets = build_jets(arrays, layout["jets"])
    n = len(jets)
    good = (jets.pt > layout.get("jet_pt_min", 30.0)) & (
        np.abs(jets.eta) < layout.get("jet_eta_max", 2.5)
    )
    if "jet_id" in jets.fields and layout.get("jet_id_min", 0) > 0:
        good = good & (jets.jet_id >= layout["jet_id_min"])
    choice = (layout.get("pair") or {}).get("choice", "btag")
    if choice not in PAIR_CHOICES:
        raise ConfigError(
            f"config error at 'samples.layouts.<name>.pair.choice': unknown '{choice}'; use "
            f"one of {', '.join(PAIR_CHOICES)}"
        )
    if choice == "index":
        idx, has_pair = _pair_indices(arrays, layout, ak.to_numpy(ak.num(jets)), path, first)
        sel_jets, idx = jets[has_pair], idx[has_pair]
        local = ak.local_index(sel_jets)
        pair = sel_jets[ak.from_regular(ak.Array(idx), axis=1)]
        add = sel_jets[good[has_pair] & (local != idx[:, 0]) & (local != idx[:, 1])]
    else:
        selected = jets[good]
        has_pair = ak.to_numpy(ak.num(selected) >= 2)
        selected = selected[has_pair]
        key = selected.btag if choice == "btag" else selected.pt
        selected = selected[ak.argsort(key, ascending=False, stable=True)]
        pair, add = selected[:, :2], selected[:, 2:]
    return pair, add, jets[has_pair], has_pair, n


def _plain_jagged(x) -> tuple[np.ndarray, np.ndarray] | None:  # type: ignore[no-untyped-def]
    """(offsets from 0, values) of a plain jagged (or fixed-size) array of numbers; None for
    anything else (the awkward path then handles it, errors included)."""
    import awkward as ak

    try:
        lay = ak.to_layout(x)
    except Exception:
        return None
    content = getattr(lay, "content", None)
    if not isinstance(content, ak.contents.NumpyArray) or content.parameters:
        return None
    data = content.data
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        return None
    if isinstance(lay, ak.contents.ListOffsetArray) and not lay.parameters:
        off = np.asarray(lay.offsets.data, dtype=np.int64)
        return off - off[0], data[off[0] : off[-1]]
    if isinstance(lay, ak.contents.RegularArray) and not lay.parameters:
        off = np.arange(lay.length + 1, dtype=np.int64) * lay.size
        return off, data[: off[-1]]
    return None


def _fast_jets(
    arrays: Mapping[str, Any], layout: Mapping[str, Any], choice: str
) -> tuple[dict[str, np.ndarray], np.ndarray, int] | None:
    """The pair and additional jets as padded numpy arrays, by numpy on the flat jet values.

    The same selection and order as :func:`_awkward_jets` (a stable sort by decreasing b-tag or
    pT inside each event); None (use the awkward path) for jets given as px/py/pz/E, branches
    that are not plain jagged arrays of numbers or disagree on the jet counts, and a NaN sort
    key (awkward orders NaN its own way).
    """
    branches = jet_branches(layout["jets"])
    if not all(q in branches for q in ("pt", "eta", "phi", "mass")):
        return None
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, branch in branches.items():
        got = _plain_jagged(arrays[branch])
        if got is None:
            return None
        parts[name] = got
    off = parts["pt"][0]
    if any(not np.array_equal(o, off) for o, _ in parts.values()):
        return None
    f8 = np.float64
    pt, eta = parts["pt"][1].astype(f8), parts["eta"][1].astype(f8)
    good = (pt > layout.get("jet_pt_min", 30.0)) & (np.abs(eta) < layout.get("jet_eta_max", 2.5))
    if "jet_id" in parts and layout.get("jet_id_min", 0) > 0:
        good &= parts["jet_id"][1] >= layout["jet_id_min"]
    n = len(off) - 1
    cum = np.zeros(len(good) + 1, dtype=np.int64)
    np.cumsum(good, out=cum[1:])
    n_good = cum[off[1:]] - cum[off[:-1]]
    has_pair = n_good >= 2
    chosen = np.flatnonzero(good & np.repeat(has_pair, np.diff(off)))  # event by event
    # the sort key (float64 conversion keeps the order, so the stored values are compared)
    if choice == "pt":
        key = pt[chosen]
    elif "btag" in parts:
        key = parts["btag"][1][chosen]
    else:
        key = pt[chosen] * 0.0  # the awkward path's b-tag of jets without one
    if np.isnan(key).any():
        return None
    ng = n_good[has_pair]
    start = np.zeros(len(ng), dtype=np.int64)
    np.cumsum(ng[:-1], out=start[1:])
    width = 2 + N_ADD_SLOTS
    slot = np.full((width, len(ng)), -1, dtype=np.int64)  # slot -> position in chosen
    for m in np.unique(ng):
        rows = np.flatnonzero(ng == m)
        first = start[rows]
        if m == 2:  # stable descending: the second jet first only if its key is larger
            swap = key[first + 1] > key[first]
            slot[0, rows] = first + swap
            slot[1, rows] = first + 1 - swap
        else:
            order = np.argsort(-key[first[:, None] + np.arange(m)], axis=1, kind="stable")
            for j in range(min(int(m), width)):
                slot[j, rows] = first + order[:, j]
    pair = chosen[slot[:2]]  # (2, N) jet indices
    add_rows = [np.flatnonzero(a >= 0) for a in slot[2:]]
    add_jets = [chosen[a[rows]] for a, rows in zip(slot[2:], add_rows, strict=True)]

    def raw(q: str) -> np.ndarray:
        if q in ("pt", "eta"):
            return pt if q == "pt" else eta
        if q == "btag" and "btag" not in parts:
            return pt * 0.0
        return parts[q][1]

    # (N, K) arrays in column-major order (each slot contiguous), float64
    padded = {f"pair_{q}": raw(q)[pair].astype(f8).T for q in JET_FIELDS}
    jes = [k.split(":", 1)[1] for k in parts if k.startswith(f"field:{_JES_FIELD}")]
    for q in jes:  # the varied pT and mass (jes:<var>:<q>) of the same jets
        padded[f"pair_{q}"] = parts[f"field:{q}"][1][pair].astype(f8).T
    for q in ("pt", "eta", "phi", *(q for q in jes if q.endswith(":pt"))):
        values = raw(q) if q in ("pt", "eta", "phi") else parts[f"field:{q}"][1]
        out = np.zeros((N_ADD_SLOTS, len(ng)))
        for k, (rows, jets) in enumerate(zip(add_rows, add_jets, strict=True)):
            out[k, rows] = values[jets]
        padded[f"add_{q}"] = out.T
    return padded, has_pair, n


def _event_names(
    layout: Mapping[str, Any], is_mc: bool, arrays: Mapping[str, Any], extra: Sequence[str] = ()
) -> list[str]:
    """Event-level branches in the chunk that expressions may use (scalars per event)."""
    import awkward as ak

    fields = arrays.fields if isinstance(arrays, ak.Array) else list(arrays)
    wanted = expression_branches(layout, is_mc) | set(extra)
    return [f for f in fields if f in wanted]


def extra_columns(layout: Mapping[str, Any], ns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The layout's ``columns``: safe expressions over the event-level branches."""
    out = {}
    for name, expr in (layout.get("columns") or {}).items():
        try:
            values = expressions.evaluate(str(expr), ns)
        except ConfigError as exc:
            raise ConfigError(
                f"config error at 'samples.layouts.<name>.columns.{name}': {exc}"
            ) from None
        n = len(next(iter(ns.values()))) if ns else 0
        out[name] = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
    return out


def pad(x, k: int, fill: float = 0.0) -> np.ndarray:  # type: ignore[no-untyped-def]
    import awkward as ak

    return ak.to_numpy(ak.fill_none(ak.pad_none(x, k, clip=True), fill)).astype(np.float64)


def two(x) -> np.ndarray:  # type: ignore[no-untyped-def]
    import awkward as ak

    return ak.to_numpy(x).astype(np.float64).reshape(-1, 2)


def sum_of_weights(path: str, normalisation: Mapping[str, Any] | None) -> float | None:
    """The file's sum of generator weights from the ``Runs`` tree (None: sum the events)."""
    norm = dict(normalisation or {})
    source = norm.get("from", "events")
    if source != "runs":
        return None
    import uproot

    tree_name, branch = norm.get("tree", "Runs"), norm.get("branch", "genEventSumw")
    with uproot.open(path) as fin:
        keys = [k.split(";")[0] for k in fin.keys(recursive=False)]
        if tree_name not in keys:
            raise InputError(
                f"normalisation tree '{tree_name}' not found in {path}; the file holds: "
                f"{', '.join(keys) or 'nothing'} (samples.layouts.<name>.normalisation.tree)"
            )
        tree = fin[tree_name]
        check_branches(list(tree.keys()), path, [branch])
        values = tree.arrays([branch], library="np")[branch]
    return float(np.sum(np.asarray(values, dtype=np.float64)))
