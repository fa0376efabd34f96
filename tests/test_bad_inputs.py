"""Bad inputs fail early, with a message naming the key, file or sample and saying what to do,
and leave no valid-looking output behind (issue "Reliability and security", data and config).

Package functions where they suffice (fast); Snakemake dry runs (config time, no job runs) where
the point is that the workflow refuses to start.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pandas as pd
import pytest
import uproot
import yaml
from conftest import REPO, run_snakemake

from vhbb import config as cfgmod
from vhbb.config import params as P
from vhbb.config import scans
from vhbb.core.errors import ConfigError, DataError, InputError
from vhbb.data import cache, export, expressions, toy

CFG = cfgmod.load_config([REPO / "config" / "config.yaml"])
FLAT = CFG["samples"]["layouts"]["flat"]
PRESEL = CFG["regions"]["preselection"]
REGIONS = CFG["regions"]["definitions"]
COLS = {
    "btag_max": np.array([0.95, 0.5, 0.99]),
    "n_add_jets": np.array([2.0, 3.0, 0.0]),
    "m_jj": np.array([100.0, 60.0, 125.0]),
}


def base_config() -> dict:
    return copy.deepcopy(CFG)


def file_spec(sample: str = "TT", is_mc: bool = True, **kw) -> dict:  # type: ignore[no-untyped-def]
    spec = {
        "sample": sample,
        "is_mc": is_mc,
        "layout": FLAT,
        "preselection": PRESEL,
        "regions": REGIONS,
        "nan_policy": "drop",
        "chunk_size": 1000,
    }
    spec.update(kw)
    return spec


@pytest.fixture(scope="module")
def mc_branches() -> dict[str, np.ndarray]:
    return toy.generate_mc_file("TT", 3000, toy.derive_seed(5, "TT", 0), 0)


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory, mc_branches):
    path = tmp_path_factory.mktemp("mc") / "tt.root"
    toy.write_tree(path, mc_branches)
    return path


@pytest.fixture(scope="module")
def data_branches() -> dict[str, np.ndarray]:
    expected = {"TT": 400.0, "Zlf": 600.0, "Zhf": 400.0}
    return toy.generate_data_file(expected, toy.derive_seed(5, "data", 0), 0)


def write(path, branches):  # type: ignore[no-untyped-def]
    toy.write_tree(path, branches)
    return str(path)


# ------------------------------------------------------------------ selections
def test_bitwise_and_next_to_a_comparison_is_refused_with_the_parenthesised_form():
    expr = "btag_max > 0.9 & n_add_jets >= 2"
    with pytest.raises(ConfigError) as err:
        expressions.evaluate(expr, COLS)
    msg = str(err.value)
    assert "reads as 'btag_max > (0.9 & n_add_jets) >= 2'" in msg
    assert "write '(btag_max > 0.9) & (n_add_jets >= 2)'" in msg
    # the parenthesised form and `and` mean what the physicist meant, and agree
    good = expressions.evaluate("(btag_max > 0.9) & (n_add_jets >= 2)", COLS)
    np.testing.assert_array_equal(good, [True, False, False])
    np.testing.assert_array_equal(
        good, expressions.evaluate(msg.split("write '")[1].split("'")[0], COLS)
    )
    np.testing.assert_array_equal(
        good, expressions.evaluate("btag_max > 0.9 and n_add_jets >= 2", COLS)
    )
    with pytest.raises(ConfigError, match=r"write '~\(n_add_jets >= 2\)"):
        expressions.parse("~n_add_jets >= 2")


def test_constant_arithmetic_is_bounded():
    start = time.perf_counter()
    for expr, fragment in [
        ("10**10**7 > m_jj", "exponent of '10\\*\\*10\\*\\*7' must be a number"),
        ("m_jj ** n_add_jets > 1", "exponent"),
        ("m_jj ** 1000 > 1", "magnitude at most 100"),
        ("+".join(["m_jj"] * 1500) + " > 0", "characters \\(at most 5000\\)"),
        ("-" * 2000 + "m_jj > 0", "too large"),
        ("m_jj > 1 / 0", "write the value as a number"),
    ]:
        with pytest.raises(ConfigError, match=fragment):
            expressions.evaluate(expr, COLS)
    assert time.perf_counter() - start < 2.0
    # ordinary powers still work, constants fold in floating point
    assert expressions.evaluate("m_jj**2 > 10**4 * 1.5", COLS).tolist() == [False, False, True]


# ------------------------------------------------------------------ repeated inputs
def test_the_same_file_twice_is_a_config_error_naming_it():
    bad = base_config()
    bad["samples"]["list"]["TT"] = {
        "process": "TT", "xsec_pb": 1.0, "source": "files", "files": ["in/a.root", "./in/a.root"],
    }  # fmt: skip
    with pytest.raises(ConfigError) as err:
        cfgmod.check_consistency(bad)
    msg = str(err.value)
    assert "in/a.root" in msg and "samples.list.TT.files[0]" in msg and "[1]" in msg
    assert "List each file once" in msg
    bad["samples"]["list"]["TT"]["files"] = ["in/a.root"]
    bad["samples"]["list"]["others"] = {
        "process": "others", "xsec_pb": 1.0, "source": "files",
        "files": ["root://eos.cern.ch//store/x.root", "in/a.root"],
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"in/a.root at samples.list.TT.files\[0\], "):
        cfgmod.check_consistency(bad)


def test_repeated_event_keys_in_a_sample_fail_naming_the_files(mc_file, mc_branches, tmp_path):
    copy_path = write(tmp_path / "tt_copy.root", mc_branches)
    parts = []
    for i, path in enumerate([str(mc_file), copy_path]):
        out = tmp_path / f"part{i}.parquet"
        cache.run_cache_file(path, out, **file_spec())
        parts.append(str(out))
    out, stats = tmp_path / "TT.parquet", tmp_path / "TT.json"
    with pytest.raises(DataError) as err:
        cache.run_cache_sample(parts, out, stats, sample="TT", is_mc=True, xsec_pb=1.0, lumi=41.5)
    msg = str(err.value)
    assert "sample 'TT'" in msg and "more than once" in msg
    assert str(mc_file) in msg and copy_path in msg
    assert "remove the duplicate file from samples.list.TT.files" in msg
    assert not out.exists() and not stats.exists()


def test_data_overlap_removal_keeps_each_event_once_by_priority(data_branches, tmp_path):
    n = len(data_branches["event"])
    first = write(tmp_path / "met.root", data_branches)
    # the second primary dataset: half the events of the first plus events of its own
    own = toy.generate_data_file({"TT": 300.0}, toy.derive_seed(6, "data", 1), 1)
    second_branches = {k: np.concatenate([v[: n // 2], own[k]]) for k, v in data_branches.items()}
    second = write(tmp_path / "jetht.root", second_branches)
    parts = {}
    for name, path in (("MET", first), ("JetHT", second)):
        parts[name] = str(tmp_path / f"{name}.part0.parquet")
        cache.run_cache_file(path, parts[name], **file_spec(name, is_mc=False))
    first_frame = pd.read_parquet(parts["MET"])
    stats = cache.run_cache_sample(
        [parts["JetHT"]], tmp_path / "JetHT.parquet", tmp_path / "JetHT.json",
        sample="JetHT", is_mc=False, xsec_pb=None, lumi=None,
        overlap_parts={"MET": [parts["MET"]]},
    )  # fmt: skip
    merged = pd.read_parquet(tmp_path / "JetHT.parquet")
    shared = first_frame["event"].isin(second_branches["event"][: n // 2])
    assert stats["n_overlap_removed"] == {"MET": int(shared.sum())} and shared.sum() > 0
    assert len(merged) == len(pd.read_parquet(parts["JetHT"])) - int(shared.sum())
    assert (merged["run"] == own["run"][0]).all(), "only JetHT's own events remain"
    # the config side: priority names data samples; the lower-ranked sample reads the parts
    cfg = base_config()
    cfg["samples"]["list"]["data2"] = {"process": "data", "source": "toy"}
    cfg["samples"]["overlap_removal"] = {"enabled": True, "priority": ["data2", "data"]}
    cfgmod.check_consistency(cfg)
    assert P.cache_sample(cfg, "data")["overlap_with"] == ["data2"]
    assert "overlap_with" not in P.cache_sample(cfg, "data2")
    assert "overlap_with" not in P.cache_sample(CFG, "data"), "default params unchanged"
    cfg["samples"]["overlap_removal"]["priority"] = ["data2", "ZH"]
    with pytest.raises(ConfigError, match=r"overlap_removal.priority': 'ZH' is not a data"):
        cfgmod.check_consistency(cfg)
    cfg["samples"]["overlap_removal"]["priority"] = ["data2"]
    with pytest.raises(ConfigError, match=r"data sample\(s\) data missing"):
        cfgmod.check_consistency(cfg)


def test_shared_data_events_without_overlap_removal_fail_the_export(mc_file, data_branches):
    mc, _ = cache.cache_file(str(mc_file), **file_spec())
    data, _ = cache.cache_file(str(mc_file), **file_spec("d", is_mc=False))
    kw = {
        "regions": list(REGIONS),
        "processes": {"TT": {"role": "nonresonant"}, "data": {"role": "data"}},
        "blinded": True,
        "training_region": "SR_medhigh_Znn",
    }
    samples = {n: {"process": "TT"} for n in ("TT", "TT_ext")}
    # MC samples share run numbers (and here every key): never compared
    export.check_samples({"TT": mc, "TT_ext": mc}, samples=samples, **kw)
    samples = {"MET": {"process": "data"}, "JetHT": {"process": "data"}}
    with pytest.raises(DataError) as err:
        export.check_samples({"MET": data, "JetHT": data}, samples=samples, **kw)
    msg = str(err.value)
    assert "data samples JetHT, MET share" in msg and "enable samples.overlap_removal" in msg


# ------------------------------------------------------------------ scan values
@pytest.mark.parametrize(
    ("scan", "fragment"),
    [
        ({"base": "disco", "grid": {"epochs": [5, -3]}}, r"scans.s.grid.epochs.*-3.*minimum"),
        (
            {"base": "disco", "grid": {"disco.lambda": ["five"]}},
            r"scans.s.grid.disco.lambda.*'five'.*not of type 'number'",
        ),
        (
            {"base": "disco", "random": {"n": 3, "parameters": {"dropout": {"uniform": [0.5, 3]}}}},
            r"scans.s.random.parameters.dropout.*maximum",
        ),
        (
            {
                "base": "disco",
                "random": {"n": 2, "parameters": {"optimizer": {"values": ["adamw"]}}},
            },
            r"scans.s.random.parameters.optimizer.*'adamw'",
        ),
    ],
)
def test_scan_values_are_validated_like_the_keys_they_set(scan, fragment):
    bad = base_config()
    bad["scans"] = {"s": scan}
    with pytest.raises(ConfigError, match=fragment):
        scans.expand(bad)
    with pytest.raises(ConfigError, match=fragment):
        P.all_models(bad)  # what the Snakefile runs right after validating


# ------------------------------------------------------------------ config-time checks
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda c: c["regions"]["definitions"].update(CR_tt="btag_max > 0.9 and (n_add_jets"),
            r"regions.definitions.CR_tt': cannot parse selection",
        ),
        (
            lambda c: c["regions"]["definitions"].update(CR_tt="btagmax > 0.9"),
            r"regions.definitions.CR_tt': unknown column 'btagmax' \(did you mean 'btag_max'",
        ),
        (
            lambda c: c["regions"].update(preselection="met > 170"),
            r"regions.preselection': unknown column 'met'.*cached columns are",
        ),
        (
            lambda c: c["features"]["training"].append("softactivity"),
            r"features.training': unknown feature 'softactivity' \(did you mean 'soft_activity'",
        ),
        (
            lambda c: c["models"]["list"]["disco"].update(preset="masless"),
            r"models.list.disco.preset': unknown preset 'masless'; defined presets: base, massless",
        ),
        (
            lambda c: c["blinding"].update(window=[150, 90]),
            r"blinding.window': must be \[low, high\] with low < high.*\[90, 150\]",
        ),
        (
            lambda c: c["samples"]["list"]["VZ"].pop("xsec_pb"),
            r"samples.list.VZ.xsec_pb': the MC sample 'VZ'.*add xsec_pb",
        ),
        (
            lambda c: c["samples"]["list"]["VZ"].update(source="files", files=[]),
            r"samples.list.VZ.files': sample 'VZ' has source 'files' but no files",
        ),
    ],
    ids=["syntax", "unknown-name", "presel", "feature", "preset", "window", "xsec", "no-files"],
)
def test_config_time_checks_name_the_key(change, fragment):
    bad = base_config()
    change(bad)
    with pytest.raises(ConfigError, match=fragment):
        cfgmod.check_consistency(bad)


@pytest.mark.parametrize(
    ("overlay", "fragment"),
    [
        (
            {"regions": {"definitions": {"CR_tt": "btag_max > 0.9 & n_add_jets >= 2"}}},
            "write '(btag_max > 0.9) & (n_add_jets >= 2)'",
        ),
        ({"scans": {"disco_lambda": {"grid": {"epochs": [-3]}}}}, "scans.disco_lambda.grid.epochs"),
        ({"models": {"list": {"disco": {"preset": "masless"}}}}, "defined presets: base, massless"),
        ({"samples": {"list": {"VZ": {"xsec_pb": None}}}}, "samples.list.VZ.xsec_pb"),
    ],
    ids=["precedence", "scan-value", "preset", "xsec"],
)
def test_dry_run_fails_at_config_time(tmp_path, overlay, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(overlay))
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "all", check=False, overlays=[path])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert fragment in out, out[-3000:]
    assert "ConfigError" in out and "Job stats" not in out, "fails before building the DAG"
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


def test_dry_run_wires_data_overlap_removal(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("met0", "met1", "jet0"):
        (tmp_path / "in" / f"{name}.root").write_bytes(b"")
    overlay = tmp_path / "o.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "samples": {
                    "overlap_removal": {"enabled": True, "priority": ["MET", "JetHT", "data"]},
                    "list": {
                        "MET": {"process": "data", "source": "files",
                                "files": ["in/met0.root", "in/met1.root"]},
                        "JetHT": {"process": "data", "source": "files", "files": ["in/jet0.root"]},
                    },
                }
            }
        )
    )  # fmt: skip
    proc = run_snakemake(
        tmp_path, "-n", "--cores", "1", "results/cache/JetHT.parquet", overlays=[overlay]
    )
    job = proc.stdout.split("rule cache_sample:")[1].split("\n\n")[0]
    assert "results/cache/parts/MET/part0.parquet" in job
    assert "results/cache/parts/MET/part1.parquet" in job
    assert "results/cache/parts/JetHT/part0.parquet" in job


# ------------------------------------------------------------------ empty processes
def test_a_process_failing_the_preselection_fails_the_export(mc_file, tmp_path, caplog):
    cached = {}
    for name, presel in (("TT", "met_pt > 1e9"), ("ZH", PRESEL)):
        part = tmp_path / f"{name}.part.parquet"
        cache.run_cache_file(str(mc_file), part, **file_spec(name, preselection=presel))
        cached[name] = str(tmp_path / f"{name}.parquet")
        cache.run_cache_sample(
            [str(part)], cached[name], tmp_path / f"{name}.json",
            sample=name, is_mc=True, xsec_pb=1.0, lumi=41.5,
        )  # fmt: skip
    assert "sample 'TT'" in caplog.text and "none passes the preselection" in caplog.text
    spec = P.export(CFG)
    outputs = {r: str(tmp_path / f"{r}.h5") for r in CFG["export"]["regions"]}
    summary = tmp_path / "summary.json"
    with pytest.raises(DataError) as err:
        export.run_export(cached, outputs, str(summary), spec)
    msg = str(err.value)
    assert "sample 'TT' (process 'TT') has no event passing regions.preselection" in msg
    assert "SR_medhigh_Znn, CR_tt, CR_Zhf, CR_Zlf" in msg and "remove 'TT'" in msg
    assert not summary.exists() and not any((tmp_path / f"{r}.h5").exists() for r in outputs)


# ------------------------------------------------------------------ non-finite weights
def test_one_nan_generator_weight_names_the_file_and_branch(mc_branches, tmp_path):
    branches = {k: v.copy() for k, v in mc_branches.items()}
    branches["genWeight"][1234] = np.nan
    path = write(tmp_path / "nanweight.root", branches)
    out = tmp_path / "part0.parquet"
    for policy in ("drop", "error"):
        with pytest.raises(DataError) as err:
            cache.run_cache_file(path, out, **file_spec(nan_policy=policy))
        msg = str(err.value)
        assert "1 non-finite generator weight(s) in branch 'genWeight'" in msg
        assert "nanweight.root" in msg and "first at entry 1234" in msg
        assert "regenerate the file" in msg
        assert not out.exists()


# ------------------------------------------------------------------ empty inputs
def _merge(tmp_path, paths, sample="TT", is_mc=True):  # type: ignore[no-untyped-def]
    parts = []
    for i, path in enumerate(paths):
        part = tmp_path / f"{sample}.part{i}.parquet"
        cache.run_cache_file(path, part, **file_spec(sample, is_mc=is_mc))
        parts.append(str(part))
    out, stats = tmp_path / f"{sample}.parquet", tmp_path / f"{sample}.json"
    try:
        cache.run_cache_sample(
            parts, out, stats, sample=sample, is_mc=is_mc,
            xsec_pb=1.0 if is_mc else None, lumi=41.5 if is_mc else None,
        )  # fmt: skip
    finally:
        assert not out.exists() and not stats.exists()


def test_empty_inputs_are_named_for_what_they_are(mc_branches, data_branches, tmp_path):
    empty_mc = write(tmp_path / "empty_mc.root", {k: v[:0] for k, v in mc_branches.items()})
    empty_data = write(tmp_path / "empty_data.root", {k: v[:0] for k, v in data_branches.items()})
    # an empty tree (MC): not "check the weight branch"
    with pytest.raises(InputError) as err:
        _merge(tmp_path, [empty_mc])
    msg = str(err.value)
    assert "sample 'TT': its input files hold no events" in msg and "empty_mc.root" in msg
    assert "weight branch" not in msg
    # a data file with zero entries: not "no event passes the preselection"
    with pytest.raises(InputError, match=r"sample 'data'.*hold no events.*empty_data.root"):
        _merge(tmp_path, [empty_data], sample="data", is_mc=False)
    # source: files without files: at config time, and the merge of nothing says so too
    with pytest.raises(InputError, match=r"sample 'TT' has no input files: list them"):
        cache.merge_sample([], [], sample="TT", is_mc=True, xsec_pb=1.0, lumi_fb=1.0)
    # every event dropped for a non-finite value
    branches = {k: v.copy() for k, v in data_branches.items()}
    branches["MET_pt"][:] = np.nan
    all_nan = write(tmp_path / "all_nan.root", branches)
    with pytest.raises(DataError) as err:
        _merge(tmp_path, [all_nan], sample="data", is_mc=False)
    msg = str(err.value)
    assert "every event with a b-jet pair" in msg and "dropped for non-finite values" in msg
    assert "preselection" not in msg
    # an empty file next to a good one is only a warning: the sample is fine
    good = write(tmp_path / "good.root", data_branches)
    with uproot.open(good) as fin:
        assert fin["Events"].num_entries > 0
    parts = []
    for i, path in enumerate([good, empty_data]):
        part = tmp_path / f"mix.part{i}.parquet"
        cache.run_cache_file(path, part, **file_spec("data", is_mc=False))
        parts.append(str(part))
    stats = cache.run_cache_sample(
        parts, tmp_path / "mix.parquet", tmp_path / "mix.json",
        sample="data", is_mc=False, xsec_pb=None, lumi=None,
    )  # fmt: skip
    assert stats["n_files"] == 2 and stats["n_selected"] > 0
