"""REVTAFConfig: nested, immutable, checked, and able to read the old flat format."""
from __future__ import annotations

import dataclasses
import json

import pytest

from rrg_core.config import FLAT_BEFORE_THEY_EXISTED, FORMAT_VERSION, RETIRED, REVTAFConfig, convert_flat


def test_a_config_cannot_be_changed_in_place_only_replaced():
    config = REVTAFConfig.preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lre.enabled = False  # type: ignore[misc]
    off = config.replace(lre={"enabled": False}, dropout=0.0)
    assert (off.lre.enabled, off.dropout, off.lre.dim) == (False, 0.0, config.lre.dim)  # the rest of lre is kept
    assert config.lre.enabled  # the original is untouched
    with pytest.raises(ValueError, match="retrieval.metric must be one of"):
        config.replace(retrieval={"metric": "manhattan"})


def test_save_and_load_round_trip(tmp_path):
    config = REVTAFConfig.preset("small", diagnosis={"label_priors": [[0.25] * 4] * 14})
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION and saved["lre"]["dim"] == config.lre.dim
    assert REVTAFConfig.load(tmp_path / "config.json") == config


def test_the_flat_format_converts_and_fills_only_what_it_could_not_have_said():
    flat = {"format_version": 1, "use_lre": False, "hyperbolic_dim": 64, "alpha": 3.0, "image_size": 128,
            "decoder_hidden": 64, "decoder_heads": 4, "num_beams": 2}
    # Written before these fields existed: the behaviour of that time, not today's default...
    assert convert_flat(flat)["vision"]["pyramid_upsampling"] == FLAT_BEFORE_THEY_EXISTED["pyramid_upsampling"]
    with pytest.raises(ValueError, match="vision.pyramid_upsampling = 'nearest' is a first-recipe choice"):
        REVTAFConfig.from_dict(flat)  # ...which, for the pyramid's upsampling, this rrg_core no longer builds
    config = REVTAFConfig.from_dict({**flat, "pyramid_upsampling": "aligned"})
    assert (config.lre.enabled, config.lre.dim, config.lre.rank_weight) == (False, 64, 3.0)
    assert (config.vision.image_size, config.decoder.hidden, config.generation.num_beams) == (128, 64, 2)
    assert config.fvtaf.grounding_weight == FLAT_BEFORE_THEY_EXISTED["grounding_weight"]
    assert convert_flat({"use_mpsa": False}, complete=False) == {"fvtaf": {"mpsa": False}}
    with pytest.raises(ValueError, match="unknown field"):
        REVTAFConfig.from_dict({"format_version": 1, "warp_drive": True})
    with pytest.raises(ValueError, match="learnable curvature"):
        REVTAFConfig.from_dict({"format_version": 1, "learnable_curvature": True})


def test_unknown_sections_fields_and_versions_are_refused():
    good = REVTAFConfig().to_dict()
    with pytest.raises(ValueError, match=r"config.json lre has unknown field\(s\) \['dims'\]"):
        REVTAFConfig.from_dict({**good, "lre": {"dims": 3}})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['vision2'\]"):
        REVTAFConfig.from_dict({**good, "vision2": {}})
    with pytest.raises(ValueError, match="format_version 99"):
        REVTAFConfig.from_dict({**good, "format_version": 99})


@pytest.mark.parametrize(("section", "name"), [(s, n) for s, fields in RETIRED.items() for n in fields])
def test_a_retired_switch_loads_with_its_one_value_and_is_refused_with_another(section, name):
    """Every file written before the first recipe's switches were retired names them: with the
    value this rrg_core builds it loads as if it did not, with another it is refused by name."""
    kept = REVTAFConfig.preset("tiny")
    named = kept.to_dict()
    named[section][name] = RETIRED[section][name]
    assert REVTAFConfig.from_dict(named) == kept
    other = {True: False, "aligned": "nearest", "similarity": "alignment"}[RETIRED[section][name]]
    named[section][name] = other
    with pytest.raises(ValueError, match=rf"{section}\.{name} = {other!r} is a first-recipe choice .* rrg_core 0\.1"):
        REVTAFConfig.from_dict(named)
