"""One ``--set`` parser and one wildcard rule for the CLI, the form and the API; presets and backbones
listed once (``sta_models.config``) and read by every place that offers a choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboard.config_form import BACKBONES as FORM_BACKBONES
from dashboard.config_form import build_config as form_build_config
from sta_models.config import BACKBONES, BRANCHES, DEFAULT_PRESET, PRESETS, PipelineConfig, preset
from sta_models.config_overrides import (
    ConfigErrors,
    config_from_overrides,
    expand_key,
    parse_set_option,
    parse_set_options,
)
from worker.commands import build_config as cli_build_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("item", "expected"),
    [("coarse.s.epochs=3", ("coarse.s.epochs", 3)), ("sta.lr=1e-3", ("sta.lr", 0.001)),
     ("sta.decay_epochs=[2, 4]", ("sta.decay_epochs", [2, 4])),
     ("coarse.s.backbone=resnet50", ("coarse.s.backbone", "resnet50")),
     ("sta.audio_weights=null", ("sta.audio_weights", None)),
     (" sta.device =cuda:1", ("sta.device", "cuda:1")),
     ("sta.device=a=b", ("sta.device", "a=b"))],  # only the first '=' splits
)
def test_parse_set_option(item: str, expected: tuple[str, Any]) -> None:
    assert parse_set_option(item) == expected


@pytest.mark.parametrize("item", ["coarse.s.epochs", "=3", " =3", ""])
def test_parse_set_option_rejects_a_missing_key_or_equals(item: str) -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_set_option(item)


def test_a_later_set_of_the_same_key_wins() -> None:
    assert parse_set_options(["sta.lr=0.1", "sta.epochs=2", "sta.lr=0.2"]) == {"sta.lr": 0.2, "sta.epochs": 2}


# The wildcard rule: '*' stands for every branch of coarse/fine, and nowhere else.
@pytest.mark.parametrize(
    ("key", "paths"),
    [("coarse.*.epochs", [["coarse", b, "epochs"] for b in BRANCHES]),
     ("fine.*.lr", [["fine", b, "lr"] for b in BRANCHES]),
     ("coarse.s.epochs", [["coarse", "s", "epochs"]]),
     ("*.s.epochs", [["*", "s", "epochs"]]),  # not a branch position: taken literally, so unknown
     ("sta.*", [["sta", "*"]]),
     ("coarse..epochs", [])],
)
def test_expand_key(key: str, paths: list[list[str]]) -> None:
    assert expand_key(key) == paths


def test_wildcard_sets_every_branch_and_nothing_else() -> None:
    cfg = config_from_overrides("tiny", {"coarse.*.epochs": 2, "fine": {"*": {"lr": 0.5}}})
    base = preset("tiny")
    assert {b: cfg.coarse[b].epochs for b in BRANCHES} == dict.fromkeys(BRANCHES, 2)
    assert {b: cfg.fine[b].lr for b in BRANCHES} == dict.fromkeys(BRANCHES, 0.5)
    assert cfg.fine["s"].epochs == base.fine["s"].epochs and cfg.sta == base.sta
    assert cfg.coarse["s"].lr == base.coarse["s"].lr


@pytest.mark.parametrize(
    "key", ["*.s.epochs", "*.epochs", "sta.*", "extract.*", "coarse.s.*", "coarse.*", "coarse.*.bogus",
            "pseudo_gt.*.min_box"],
)
def test_wildcard_elsewhere_is_an_unknown_setting_named_as_written(key: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        config_from_overrides("tiny", {key: 1})
    assert info.value.fields == {key: "unknown setting"}


def test_the_cli_and_the_form_read_the_same_items_the_same_way() -> None:
    items = ["coarse.*.epochs=1", "sta.decay_epochs=[2]", "fine.sa.lr=0.5", "extract.size=64",
             "pseudo_gt.min_box=32", "sta.audio_weights="]
    cli = cli_build_config("tiny", items)
    form = form_build_config("tiny", parse_set_options(items))
    assert isinstance(cli, PipelineConfig) and cli == form
    assert cli.coarse["st"].epochs == 1 and cli.sta.decay_epochs == [2] and cli.sta.audio_weights is None


@pytest.mark.parametrize(
    ("items", "message"),
    [(["*.s.epochs=1"], "invalid configuration: *.s.epochs: unknown setting"),
     (["coarse.s.epochs=0"], "invalid configuration: coarse.s.epochs: must be at least 1"),
     (["coarse.*.epochs=0"], "invalid configuration: coarse.s.epochs: must be at least 1; "
                             "coarse.sa.epochs: must be at least 1; coarse.st.epochs: must be at least 1"),
     (["coarse.s.epochs"], "--set expects key=value, got 'coarse.s.epochs'")],
)
def test_cli_errors_are_one_line_and_match_the_form(items: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        cli_build_config("tiny", items)
    assert str(info.value) == message and "\n" not in message
    if "=" in items[0]:
        with pytest.raises(ConfigErrors) as form:
            form_build_config("tiny", parse_set_options(items))
        assert f"invalid configuration: {form.value}" == message


def test_stapipe_run_stores_the_overridden_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``stapipe run --set`` end to end on the embedded default: the pipeline row holds the overrides."""
    from db.models import Pipeline
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker.cli import main

    monkeypatch.setenv("STAPIPE_HOME", str(tmp_path / "home"))
    for var in ("STAPIPE_DATABASE_URL", "STAPIPE_BROKER_URL", "STAPIPE_ARTEFACT_ROOT", "STAPIPE_LOG_ROOT",
                "STAPIPE_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    try:
        dataset = tmp_path / "ds"
        dataset.mkdir()
        rc = main(["run", "--dataset", str(dataset), "--set", "coarse.*.epochs=1", "--set", "sta.lr=0.25",
                   "--no-follow"])
        assert rc == 0 and "submitted pipeline" in capsys.readouterr().out
        with session_scope(get_settings().db_url) as session:
            (p,) = session.query(Pipeline).all()
            cfg = PipelineConfig.model_validate(p.config)
        assert cfg.preset == DEFAULT_PRESET and cfg.sta.lr == 0.25
        assert [cfg.coarse[b].epochs for b in BRANCHES] == [1, 1, 1]
        with pytest.raises(SystemExit, match=r"^invalid configuration: sta\.\*: unknown setting$"):
            main(["run", "--dataset", str(dataset), "--set", "sta.*=1", "--no-follow"])
    finally:
        get_settings.cache_clear()


def _choices(argv_prefix: list[str], option: str) -> tuple[str, ...]:
    from worker.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    command = sub.choices[argv_prefix[0]]  # type: ignore[index]  # argparse's sub-parser map
    (action,) = [a for a in command._actions if option in a.option_strings]
    return tuple(action.choices or ())


@pytest.mark.parametrize("command", ["run", "demo", "submit", "train-branch"])
def test_every_preset_choice_comes_from_the_one_list(command: str) -> None:
    assert _choices([command], "--preset") == PRESETS


def test_backbone_lists_agree() -> None:
    from sta_models.disk_estimate import WEIGHTS
    from sta_models.networks.backbones import _FACTORIES

    assert _choices(["train-branch"], "--backbone") == BACKBONES
    assert set(FORM_BACKBONES) == set(BACKBONES) == set(_FACTORIES)
    assert set(WEIGHTS) == {(b, n) for b in BACKBONES for n in (*BRANCHES, "sta")}


def test_openapi_preset_enums_are_the_presets() -> None:
    spec = yaml.safe_load((ROOT / "dashboard" / "openapi.yaml").read_text())
    enums = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "preset" or "preset" in node.get("properties", {}):
                schema = node.get("schema") or node["properties"]["preset"]
                if "enum" in schema:  # request parameters; responses just say string
                    enums.append((schema["enum"], schema.get("default")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert len(enums) == 2 and all(e == (list(PRESETS), DEFAULT_PRESET) for e in enums), enums
