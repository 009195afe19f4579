"""Every validation rule of the pipeline form/API config, at the function level."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.config_form import (
    PathRoots,
    build_config,
    flatten,
    form_field_names,
    presets_for_form,
)
from sta_models.config import preset
from sta_models.config_overrides import ConfigErrors


def errors_of(overrides: dict, preset_name: str = "tiny", **kw) -> dict[str, str]:
    with pytest.raises(ConfigErrors) as info:
        build_config(preset_name, overrides, **kw)
    return info.value.fields


def test_preset_values_round_trip_through_the_form_fields() -> None:
    for name in ("tiny", "demo", "paper"):
        values = flatten(preset(name))
        assert set(values) == set(form_field_names())
        cfg = build_config(name, {k: str(v) for k, v in values.items()})
        assert cfg == preset(name)


def test_overrides_apply_with_dots_wildcards_and_nesting() -> None:
    cfg = build_config("tiny", {"coarse.*.epochs": "5", "sta.decay_epochs": "7, 3", "fine": {"sa": {"lr": 0.5}}})
    assert [cfg.coarse[b].epochs for b in ("s", "sa", "st")] == [5, 5, 5]
    assert cfg.sta.decay_epochs == [3, 7]
    assert cfg.fine["sa"].lr == 0.5
    assert cfg.fine["s"].lr == preset("tiny").fine["s"].lr
    assert cfg.preset == "tiny"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"coarse.s.epochs": "0"}, "coarse.s.epochs", "must be at least 1"),
        ({"coarse.s.epochs": "1001"}, "coarse.s.epochs", "must be at most 1000"),
        ({"fine.st.epochs": "two"}, "fine.st.epochs", "must be a whole number"),
        ({"sta.batch_size": "0"}, "sta.batch_size", "must be at least 1"),
        ({"coarse.sa.input_size": "16"}, "coarse.sa.input_size", "must be at least 32"),
        ({"coarse.sa.input_size": "4096"}, "coarse.sa.input_size", "must be at most 1024"),
        ({"sta.lr": "0"}, "sta.lr", "must be more than 0"),
        ({"sta.lr": "abc"}, "sta.lr", "must be a number"),
        ({"sta.decay_epochs": "5, x"}, "sta.decay_epochs", "whole epoch numbers"),
        ({"sta.decay_epochs": "0"}, "sta.decay_epochs", "decay epochs must be between 1 and 1000"),
        ({"coarse.s.backbone": "vgg16"}, "coarse.s.backbone", "must be 'resnext101_32x8d', 'resnet50' or 'resnet18'"),
        ({"extract.size": "8"}, "extract.size", "must be at least 32"),
        ({"no.such": 1}, "no.such", "unknown setting"),
        ({"coarse.s.epochs.deeper": 1}, "coarse.s.epochs.deeper", "unknown setting"),
        ({"coarse": 3}, "coarse", "unknown setting"),
    ],
)
def test_each_rule_names_its_field(overrides: dict, field: str, message: str) -> None:
    fields = errors_of(overrides)
    assert field in fields, fields
    assert message in fields[field]


def test_cross_field_rule_is_reported_for_the_whole_config() -> None:
    fields = errors_of({"pseudo_gt.min_box": 500})
    assert fields == {"": "pseudo_gt.min_box cannot exceed extract.size"}


def test_all_bad_fields_are_reported_at_once() -> None:
    fields = errors_of({"coarse.s.epochs": "0", "sta.lr": "-1", "fine.s.batch_size": "x"})
    assert set(fields) == {"coarse.s.epochs", "sta.lr", "fine.s.batch_size"}


def test_unknown_preset() -> None:
    assert errors_of({}, preset_name="huge") == {"preset": "choose one of tiny, demo, paper"}


def test_weight_files_must_exist_inside_the_allowed_roots(tmp_path: Path) -> None:
    weights, outside = tmp_path / "weights", tmp_path / "outside"
    weights.mkdir()
    outside.mkdir()
    (weights / "r18.pth").write_bytes(b"w")
    (outside / "evil.pth").write_bytes(b"w")
    (weights / "link.pth").symlink_to(outside / "evil.pth")
    roots = PathRoots((weights.resolve(),))
    cfg = build_config("tiny", {"coarse.s.backbone_weights": "r18.pth", "sta.audio_weights": ""}, weight_roots=roots)
    assert cfg.coarse["s"].backbone_weights == str((weights / "r18.pth").resolve())
    assert cfg.sta.audio_weights is None
    for bad in ("missing.pth", "../outside/evil.pth", str(outside / "evil.pth"), "link.pth"):
        fields = errors_of({"coarse.s.backbone_weights": bad}, weight_roots=roots)
        assert fields == {"coarse.s.backbone_weights": "no such weights file inside the weights or data folder"}


def test_presets_for_form_have_every_field() -> None:
    data = presets_for_form()
    assert set(data) == {"tiny", "demo", "paper"}
    assert data["tiny"]["coarse.s.backbone"] == "resnet18"
    assert data["paper"]["coarse.s.backbone"] == "resnext101_32x8d"


# parse_set_option and the wildcard rule are tested with the CLI in tests/test_config_overrides.py
