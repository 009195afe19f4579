#!/usr/bin/env python3
"""Write a compose ``.env``: ``.env.example`` with every required secret set to a fresh random value.

Why a script: compose.yaml has no defaults for the secrets (it refuses to start without them), and
hand-made passwords end up weak or reused. Standard library only: it runs on the Docker host,
before any image exists. Refuses to overwrite an existing file (its database password is baked
into the ``database`` volume on first start).

    python3 tools/new_env.py            # writes ./.env
    python3 tools/new_env.py PATH       # writes PATH
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / ".env.example"
SECRETS = {
    "POSTGRES_PASSWORD": lambda: secrets.token_urlsafe(24),  # URL-safe: it goes into the database URL
    "STAPIPE_DASHBOARD_PASSWORD": lambda: secrets.token_urlsafe(18),
    "STAPIPE_SECRET_KEY": lambda: secrets.token_hex(32),
    "FLOWER_BASIC_AUTH": lambda: "admin:" + secrets.token_urlsafe(18),
}


def render(example: str) -> str:
    """``example`` with each empty ``SECRET=`` line filled in with a new random value."""
    out = []
    for line in example.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in SECRETS and not value.strip():
            line = f"{key}={SECRETS[key]()}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    target = Path(argv[1]) if len(argv) > 1 else Path(".env")
    if target.exists():
        print(f"{target} exists; not overwriting it (delete it first to start over)", file=sys.stderr)
        return 1
    target.write_text(render(EXAMPLE.read_text()))
    target.chmod(0o600)
    print(f"wrote {target} with new random secrets; the dashboard login is STAPIPE_DASHBOARD_PASSWORD in it")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
