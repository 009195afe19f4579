"""docs/configuration.md cannot drift from stapipe_settings.Settings or compose.yaml."""

from __future__ import annotations

import importlib.util
import re

from deploy_compose import ROOT, load

from stapipe_settings import env_names

DOC = ROOT / "docs" / "configuration.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_table", ROOT / "docs" / "gen_config_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_table_is_the_generated_one() -> None:
    gen = _generator()
    text = DOC.read_text(encoding="utf-8")
    assert gen.render(text) == text, "docs/configuration.md is out of date: run python docs/gen_config_table.py"
    assert gen.main(["--check"]) == 0


def test_table_lists_every_setting_once() -> None:
    table = _generator().table()
    names = re.findall(r"^\| `(STAPIPE_\w+)` \|", table, flags=re.M)
    assert names == [n for n in names if names.count(n) == 1]
    assert sorted(names) == env_names()


def test_container_values_in_the_doc_match_compose() -> None:
    """The hand-written "value in the containers" rows quote compose.yaml's x-stapipe-env."""
    anchor = load()["x-stapipe-env"]
    rows = re.findall(r"^\| `(\w+)` \| `(/srv/[^`]+|http://[^`]+)`", DOC.read_text(encoding="utf-8"), flags=re.M)
    assert len(rows) >= 6
    for name, value in rows:
        assert anchor.get(name) == value, f"docs/configuration.md says {name}={value}, compose.yaml {anchor.get(name)}"
