"""Reading compose.yaml, the Dockerfile and .env.example the way Docker would, without a Docker engine.

- YAML through a loader that, unlike PyYAML's default, rejects duplicate keys (Compose does too)
  while still resolving anchors and ``<<`` merge keys.
- Compose's variable interpolation (``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
  ``${VAR:?err}``, ``${VAR:+alt}``, nesting, ``$$``), applied to every string of the file.
- The Dockerfile as a list of (INSTRUCTION, arguments) with continuations joined.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
CPU_OVERRIDE = ROOT / "compose.cpu.yaml"
GITIGNORE = ROOT / ".gitignore"
# What a .env must set: compose.yaml has no defaults for these (it refuses to start without them).
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "STAPIPE_DASHBOARD_PASSWORD", "STAPIPE_SECRET_KEY", "FLOWER_BASIC_AUTH")
# A .env's secrets for the tests that read the file as compose would after `python3 tools/new_env.py`.
TEST_SECRETS = {"POSTGRES_PASSWORD": "pg-Test_1", "STAPIPE_DASHBOARD_PASSWORD": "dash-test-2",
                "STAPIPE_SECRET_KEY": "key-test-3", "FLOWER_BASIC_AUTH": "admin:flower-test-4"}

# ------------------------------------------------------------------------------------------ YAML


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that fails on a key given twice in one mapping (explicit keys, not merged ones)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """compose.yaml as YAML, before interpolation."""
    return yaml.load(path.read_text(), Loader=StrictLoader)  # noqa: S506 - SafeLoader subclass


# --------------------------------------------------------------------------------- interpolation

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    pass


def _parse(text: str, i: int, env: dict[str, str], used: set[str], stop: str | None) -> tuple[str, int]:
    """Interpolate ``text`` from position ``i`` up to an unescaped ``stop`` char (or the end)."""
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if stop is not None and ch == stop:
            return "".join(out), i
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":  # $$ is a literal $
            out.append("$")
            i += 2
        elif nxt == "{":
            m = _NAME.match(text, i + 2)
            if not m:
                raise InterpolationError(f"invalid substitution in {text!r}")
            name, j = m.group(), m.end()
            if j >= len(text):
                raise InterpolationError(f"unterminated ${{ in {text!r}")
            used.add(name)
            value = env.get(name)
            if text[j] == "}":
                out.append(value or "")
                i = j + 1
                continue
            op = text[j : j + 2] if text[j] == ":" else text[j]
            j += len(op)
            arg, j = _parse(text, j, env, used, "}")
            if j >= len(text):
                raise InterpolationError(f"unterminated ${{ in {text!r}")
            i = j + 1
            unset = value is None
            empty = unset or value == ""
            if op == ":-":
                out.append(arg if empty else value)
            elif op == "-":
                out.append(arg if unset else value)
            elif op == ":+":
                out.append("" if empty else arg)
            elif op == "+":
                out.append("" if unset else arg)
            elif op in (":?", "?"):
                if (empty if op == ":?" else unset):
                    raise InterpolationError(f"required variable {name} is missing: {arg}")
                out.append(value)
            else:
                raise InterpolationError(f"unknown operator {op!r} in {text!r}")
        else:
            m = _NAME.match(text, i + 1)
            if not m:  # a lone $ stays as it is
                out.append("$")
                i += 1
                continue
            used.add(m.group())
            out.append(env.get(m.group(), ""))
            i = m.end()
    if stop is not None:
        return "".join(out), len(text)
    return "".join(out), i


def interpolate(text: str, env: dict[str, str], used: set[str] | None = None) -> str:
    return _parse(text, 0, env, used if used is not None else set(), None)[0]


def interpolate_tree(node: Any, env: dict[str, str], used: set[str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, used)
    if isinstance(node, list):
        return [interpolate_tree(v, env, used) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, used) for k, v in node.items()}
    return node


def load(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose sees it with ``env`` as the shell environment + .env file
    (``None``: just the required secrets, i.e. a fresh .env)."""
    return interpolate_tree(load_raw(), dict(TEST_SECRETS) if env is None else env, set())


def variables_used() -> set[str]:
    used: set[str] = set()
    interpolate_tree(load_raw(), dict(TEST_SECRETS), used)
    return used


def read_env_file(path: Path = ENV_EXAMPLE, *, include_commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of a .env file; with include_commented also ``# KEY=VALUE`` examples."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if include_commented and line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.match(r"^[A-Z_][A-Z0-9_]*=\S", line):
                continue
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------------- services


def stapipe_services(compose: dict) -> dict[str, dict]:
    """Services that run the project's own image (they have a ``build`` section)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def command_of(svc: dict) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(argv: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in an argv."""
    for k, arg in enumerate(argv):
        if arg == name and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def mounts(svc: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of every volume of a service, short or long syntax."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["source"], v["target"], bool(v.get("read_only", False))))
    return out


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def duration_s(text: str) -> float:
    """Compose durations: ``1h2m3s``, ``10m``, ``90s``, ``1m30s``, ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(a) * units[b] for a, b in parts)


# --------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, ``\\`` continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comment lines inside a continuation are ignored
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    """Arguments of CMD/ENTRYPOINT in exec (JSON) form or shell form."""
    args = args.strip()
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions:
        if word == "ENV":
            for token in shlex.split(args):
                if "=" in token:
                    key, value = token.split("=", 1)
                    env[key] = value
    return env
