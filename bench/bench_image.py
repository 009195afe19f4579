"""The image (issue 12): build time, size, and what a rebuild costs after a code-only edit.

Builds the checkout's Dockerfile with the classic builder (the engine of ../shared/docker/engine.sh
has no buildx) from a copy of the build context, side by side in one run:

1. the build as it stands (``--full``: ``--no-cache``, i.e. every layer including the multi-GB
   dependency install; without it whatever the engine has cached);
2. the same after a code-only edit (one comment line appended to ``worker/report.py``): only the
   ``COPY . .`` and ``pip install --no-deps .`` layers may run again;
3. the same after an edit of pyproject.toml outside its dependency list (a comment): the
   dependency list comes from a first stage, so the dependency layer must stay cached.

Prints the wall time of each, which layers were rebuilt, the image size and its biggest layers.
Run: ``.venv/bin/python bench/bench_image.py [--full]`` (seconds to minutes; --full ~10 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "stapipe:bench-image"


def context_copy(dest: Path) -> Path:
    """The files git knows about (tracked + untracked, not ignored): what a fresh clone builds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def build(ctx: Path, *extra: str) -> tuple[float, int, int]:
    """(wall s, steps run, steps from cache)."""
    t0 = time.perf_counter()
    done = subprocess.run(["docker", "build", *extra, "-t", TAG, str(ctx)], capture_output=True, text=True,
                          env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/local/bin:/usr/bin:/bin"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"docker build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    steps = done.stdout.count("\nStep ")
    cached = done.stdout.count("Using cache")
    return wall, steps, cached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="first build with --no-cache (downloads ~3 GB of wheels)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp:
        ctx = context_copy(Path(tmp))
        rows = [("as it stands" + (" (--no-cache)" if args.full else ""), *build(ctx, *(["--no-cache"] if args.full else [])))]
        with (ctx / "worker" / "report.py").open("a") as fh:
            fh.write("# bench_image: a code-only edit\n")
        rows.append(("after a code-only edit", *build(ctx)))
        with (ctx / "pyproject.toml").open("a") as fh:
            fh.write("# bench_image: an edit outside the dependency list\n")
        rows.append(("after a pyproject.toml edit (not dependencies)", *build(ctx)))
    info = json.loads(subprocess.run(["docker", "image", "inspect", TAG], check=True, capture_output=True,
                                     text=True).stdout)[0]
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", TAG],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    print("| build | wall s | steps | from cache |\n|---|---|---|---|")
    for name, wall, steps, cached in rows:
        print(f"| {name} | {wall:.1f} | {steps} | {cached} |")
    print(f"\nimage size: {info['Size'] / 1e9:.2f} GB; biggest layers:")
    for line in sorted(history, key=lambda h: -_bytes(h.split("\t")[0]))[:4]:
        size, cmd = line.split("\t", 1)
        print(f"  {size:>8}  {cmd[:110]}")
    subprocess.run(["docker", "rmi", TAG], capture_output=True)
    return 0


def _bytes(text: str) -> float:
    units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in ("kB", "MB", "GB", "B"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
