"""``stapipe``: one command line for the library, the job system and the dashboard client.

Each area registers its own sub-commands from its own module (``register(subparsers)``), so the
heavy imports (torch, Celery, Flask) happen only when a command that needs them runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMAND_MODULES = (
    "sta_models.commands.data",  # synth, extract, extract-dataset
    "sta_models.commands.training",  # train-branch, cams
    "sta_models.commands.evaluate",  # evaluate
    "sta_models.commands.predict",  # predict
    "sta_models.commands.benchmark",  # benchmark
    "worker.commands",  # up, run, worker, db
    "worker.disk_commands",  # gc
    "dashboard.commands",  # dashboard, submit, status, rerun, cancel
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stapipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that area is not installed/implemented
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:  # migrations at start-up are routine; say only what went wrong
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
