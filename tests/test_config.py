"""Config schema, overlays, consistency checks and model references."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from vhbb import config as cfgmod
from vhbb.core.dicts import deep_update
from vhbb.core.errors import ConfigError

CONFIGS = REPO / "config"


@pytest.fixture(scope="module")
def base() -> dict:
    return cfgmod.load_config([CONFIGS / "config.yaml"])


@pytest.mark.parametrize("overlay", [None, "test.yaml", "full.yaml", "unblinded.yaml"])
def test_shipped_configs_validate(overlay):
    paths = [CONFIGS / "config.yaml"] + ([CONFIGS / overlay] if overlay else [])
    config = cfgmod.load_config(paths)
    assert config["lumi"] == pytest.approx(41.5)
    assert set(config) >= {
        "toy", "samples", "regions", "features", "export", "blinding", "weights",
        "models", "scans", "evaluation", "fit", "seed", "lumi", "device",
    }  # fmt: skip


def test_overlay_deep_updates_and_shrinks():
    base = yaml.safe_load((CONFIGS / "config.yaml").read_text())
    test = yaml.safe_load((CONFIGS / "test.yaml").read_text())
    merged = deep_update(base, test)
    assert merged["toy"]["events"]["ZH"] < base["toy"]["events"]["ZH"]
    # untouched keys survive the overlay
    assert merged["regions"] == base["regions"]
    assert (
        base["toy"]["events"]["ZH"]
        == yaml.safe_load((CONFIGS / "config.yaml").read_text())["toy"]["events"]["ZH"]
    )


def test_unknown_key_names_it_and_suggests(base):
    bad = copy.deepcopy(base)
    bad["export"]["fodls"] = 3
    with pytest.raises(ConfigError, match=r"export\.fodls.*did you mean 'folds'"):
        cfgmod.validate(bad)


def test_wrong_type_names_the_key(base):
    bad = copy.deepcopy(base)
    bad["samples"]["list"]["ZH"]["xsec_pb"] = "a lot"
    with pytest.raises(ConfigError, match=r"samples\.list\.ZH\.xsec_pb"):
        cfgmod.validate(bad)


def test_unknown_process_and_region(base):
    bad = copy.deepcopy(base)
    bad["samples"]["list"]["ZH"]["process"] = "Hbb"
    with pytest.raises(ConfigError, match="unknown process 'Hbb'"):
        cfgmod.validate(bad)
    bad = copy.deepcopy(base)
    bad["export"]["regions"] = ["SR_medhigh_Znn", "CR_ttbar"]
    with pytest.raises(ConfigError, match="unknown region 'CR_ttbar'"):
        cfgmod.validate(bad)


def test_defaults_are_filled():
    config = {
        "toy": {},
        "samples": {
            "processes": {"data": {"role": "data"}},
            "list": {"d": {"process": "data", "source": "toy"}},
        },
        "regions": {"preselection": "met_pt > 0", "definitions": {"SR": "m_jj > 0"}},
        "features": {"training": ["m_jj"]},
        "export": {"training_region": "SR", "regions": ["SR"]},
        "blinding": {},
    }
    cfgmod.validate(config)
    assert config["seed"] == 20171
    assert config["export"]["folds"] == 2
    assert config["blinding"]["enabled"] is True
    assert config["samples"]["list"]["d"]["files"] == []


def test_model_reference_round_trip():
    assert cfgmod.model_path_name("best:disco_lambda") == "best-disco_lambda"
    assert cfgmod.model_path_name("adversarial") == "adversarial"
    assert cfgmod.model_reference("best-disco_lambda") == "best:disco_lambda"


def test_section_hash_is_canonical():
    a = {"x": {"b": 1, "a": [1, 2]}, "y": 2}
    b = {"y": 2, "x": {"a": [1, 2], "b": 1}}
    assert cfgmod.section_hash(a) == cfgmod.section_hash(b)
    assert cfgmod.section_hash(a) != cfgmod.section_hash({"y": 3, "x": a["x"]})


def test_config_reference_is_up_to_date():
    from vhbb.config import docs

    assert (REPO / "docs" / "config.md").read_text() == docs.render(), (
        "docs/config.md is stale: run `python -m vhbb.config.docs`"
    )


def test_an_overlay_switches_a_reweighting_off(tmp_path):
    """Overlays merge mappings, so `reweighting: {}` keeps the default correction; `enabled:
    false` removes it from the histograms, the evaluation and the derive rule's params."""
    from vhbb.config import params as P

    base = [REPO / "config" / "config.yaml"]
    assert [e["name"] for e in P.reweighting_list(cfgmod.load_config(base))] == ["soft_activity"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("reweighting: {}\n")
    assert P.reweighting_list(cfgmod.load_config([*base, empty]))  # still there
    off = tmp_path / "off.yaml"
    off.write_text("reweighting: {soft_activity: {enabled: false}}\n")
    cfg = cfgmod.load_config([*base, off])
    assert P.reweighting_list(cfg) == []
    assert "enabled" not in P.reweighting(cfgmod.load_config(base), "soft_activity")["reweighting"]
