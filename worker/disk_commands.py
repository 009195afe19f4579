"""``stapipe gc`` — delete stage folders nothing needs any more (``worker.disk``), dry run first."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("gc", help="delete artefacts no pipeline or reuse still needs (see --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and the bytes it frees")
    p.add_argument("--intermediates", action="store_true",
                   help="also the checkpoints, CAMs, crops and pseudo-GT of succeeded pipelines "
                        "(identical pipelines then recompute them instead of reusing them)")
    p.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    from dashboard.formatting import human_size as human
    from db.migrate import upgrade
    from db.session import session_scope
    from stapipe_settings import get_settings
    from worker import disk

    settings = get_settings()
    upgrade(settings.db_url)
    root = settings.artefact_dir
    with session_scope(settings.db_url) as session:
        items = disk.plan(session, root, intermediates=args.intermediates)
        if args.dry_run:
            for i in items:
                print(f"would delete {_rel(i.path, root)}  {human(i.bytes)}  ({_why(i)})")
            print(f"would free {human(sum(i.bytes for i in items))} in {len(items)} folders")
            return 0
        freed, done = disk.collect(session, root, items)
        for i in done:
            print(f"deleted {_rel(i.path, root)}  {human(i.bytes)}  ({_why(i)})")
        print(f"freed {human(freed)} in {len(done)} folders")
    return 0


def _rel(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path


def _why(item: Any) -> str:
    if item.reason == "orphan":
        return "no stage uses it"
    return f"{item.kind} of succeeded pipeline {item.pipeline_id}"
