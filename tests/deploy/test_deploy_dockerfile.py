"""The Dockerfile and .dockerignore, checked as text: base, ffmpeg, pinned install, layer order,
non-root user, and an entry point that exists in the project."""

from __future__ import annotations

import fnmatch
import re
import shlex

import pytest
from deploy_compose import (
    DOCKERIGNORE,
    command_of,
    dockerfile_env,
    dockerfile_instructions,
    exec_form,
    load,
    mounts,
)

from stapipe_settings import env_names


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions()


def _index(instructions, word: str, pattern: str) -> int:
    for k, (w, args) in enumerate(instructions):
        if w == word and re.search(pattern, args):
            return k
    pytest.fail(f"no {word} matching {pattern!r} in the Dockerfile")


def test_base_image_is_slim_python_311(instructions) -> None:
    froms = [args for word, args in instructions if word == "FROM"]
    # stage 1 only extracts the dependency list; the final stage is the image
    assert froms == ["python:3.11-slim-bookworm AS requirements", "python:3.11-slim-bookworm"], froms


def test_installs_debian_ffmpeg(instructions) -> None:
    apt = [args for word, args in instructions if word == "RUN" and "apt-get install" in args]
    assert apt and any(re.search(r"\bffmpeg\b", a) for a in apt)
    assert all("--no-install-recommends" in a and "rm -rf /var/lib/apt/lists" in a for a in apt)


def test_project_installed_with_the_constraints(instructions) -> None:
    deps = _index(instructions, "RUN", r"pip install -c constraints\.txt -r /tmp/requirements\.txt")
    # --no-deps: the code layer never resolves or installs a dependency (a code edit costs seconds)
    project = _index(instructions, "RUN", r"pip install --no-deps -c constraints\.txt \.(\s|$)")
    # the dependency layer depends on the dependency list and the pins, not on all of pyproject.toml
    final = _index(instructions, "FROM", r"^python:3\.11-slim-bookworm$")
    listed = _index(instructions, "RUN", r"\['project'\]\['dependencies'\].*> /requirements\.txt")
    assert listed < final < _index(instructions, "COPY", r"^--from=requirements /requirements\.txt ")
    copy_meta = _index(instructions, "COPY", r"^constraints\.txt \./$")
    copy_all = _index(instructions, "COPY", r"^\.\s+\.$")
    # cache-friendly order: metadata, dependencies, then the code, then the project itself
    assert copy_meta < deps < copy_all < project


def test_runs_as_non_root_with_unbuffered_output(instructions) -> None:
    users = [args for word, args in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    env = dockerfile_env(instructions)
    assert env.get("PYTHONUNBUFFERED") == "1"
    last_user = max(k for k, (w, _) in enumerate(instructions) if w == "USER")
    later = [w for w, _ in instructions[last_user:] if w == "RUN"]
    assert not later, "nothing should run as root after switching to the runtime user"


def test_default_command_is_the_dashboard_of_compose(instructions) -> None:
    entry = [exec_form(a) for w, a in instructions if w == "ENTRYPOINT"][-1]
    cmd = [exec_form(a) for w, a in instructions if w == "CMD"][-1]
    assert entry == ["/usr/bin/tini", "--"], "tini forwards SIGTERM and reaps children"
    assert any(re.search(r"\btini\b", a) for w, a in instructions if w == "RUN")
    assert cmd == command_of(load()["services"]["dashboard"]), "CMD and compose's dashboard command differ"


def test_image_paths_match_compose(instructions) -> None:
    env = dockerfile_env(instructions)
    anchor = load()["x-stapipe-env"]
    stapipe = {k: v for k, v in env.items() if k.startswith("STAPIPE_")}
    assert set(stapipe) <= set(env_names()), set(stapipe) - set(env_names())
    for key, value in stapipe.items():
        assert anchor[key] == value, f"Dockerfile {key}={value} but compose.yaml says {anchor[key]}"
    assert env["TORCH_HOME"] == anchor["TORCH_HOME"]
    # each mount point exists in the image, owned by the runtime user, so fresh volumes are writable
    mkdirs = " ".join(a for w, a in instructions if w == "RUN" and "mkdir" in a)
    targets = {t for svc in load()["services"].values() if "build" in svc for _, t, _ in mounts(svc)}
    for target in targets | {anchor["STAPIPE_HOME"]}:
        assert target in shlex.split(mkdirs), f"the image must create {target} (chown'd to the user)"
    assert "chown -R stapipe:stapipe /srv/stapipe" in mkdirs


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.removeprefix("**/")) or path.startswith(pat + "/"):
            result = not neg
    return result


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "worker/cli.py", "db/alembic.ini",
                   "dashboard/wsgi.py", "sta_models/config.py", "stapipe_settings/__init__.py", "dashboard/static/vendor/uplot/uPlot.iife.min.js"):
        assert not _ignored(needed, patterns), f".dockerignore drops {needed}, which the image needs"
    for dropped in (".git", ".venv", ".env", "var", "test-artifacts", "tests"):
        assert _ignored(dropped, patterns), f".dockerignore should drop {dropped}"
    assert not _ignored(".env.example", patterns)
