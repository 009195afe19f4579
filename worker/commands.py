"""``stapipe worker | db upgrade | up | run | demo`` — the job system's commands."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path
from typing import Any

from sta_models.config import DEFAULT_PRESET, PRESETS, PipelineConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a Celery worker (queues cpu and/or gpu)")
    p.add_argument("--queues", default="cpu,gpu", help="comma-separated: cpu, gpu (default both)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="pool processes (default: 1 for a gpu-only worker, else the CPU count)")
    p.add_argument("--hostname", default=None, help="unique worker name, e.g. gpu0@%%h (default <queues>@%%h)")
    p.add_argument("--max-tasks-per-child", type=int, default=None,
                   help="recycle pool processes (default: 1 for a gpu-only worker: fresh CUDA context per stage)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("db", help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    up = dbsub.add_parser("upgrade", help="apply the Alembic migrations")
    up.add_argument("--url", default=None, help="database URL (default: from STAPIPE_DATABASE_URL)")
    up.set_defaults(func=cmd_db_upgrade)
    cur = dbsub.add_parser("current", help="print the database's migration revision")
    cur.add_argument("--url", default=None)
    cur.set_defaults(func=cmd_db_current)

    p = sub.add_parser("up", help="embedded stack: migrations, worker process(es) and the dashboard")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--no-dashboard", action="store_true")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="submit a full pipeline and follow it in the terminal")
    _pipeline_args(p, default_preset=DEFAULT_PRESET)
    p.add_argument("--dataset", required=True, type=Path, help="AVE-layout dataset folder")
    p.add_argument("--workers", type=int, default=0,
                   help="start this many local worker processes for the run (0: use running workers; "
                        "on the embedded default one is started when none is online)")
    p.add_argument("--no-follow", action="store_true", help="print the pipeline id and return")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="synthetic dataset + embedded stack + full pipeline + evaluation table")
    _pipeline_args(p, default_preset="demo")
    # 4 x 6 clips of 6 s: the demo preset finishes in about 6 minutes on 2 CPU cores (bench/RESULTS.md)
    p.add_argument("--classes", type=int, default=4, help="sound classes in the synthetic dataset")
    p.add_argument("--videos-per-class", type=int, default=6)
    p.add_argument("--seconds", type=int, default=6, help="length of each synthetic clip")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--concurrency", type=int, default=2, help="tasks per worker process")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument("--exit", action="store_true",
                   help="stop everything when the pipeline ends (default: the dashboard keeps running until Ctrl-C)")
    p.set_defaults(func=cmd_demo)


def _pipeline_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, choices=PRESETS)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (JSON value; '*' matches every branch: coarse.*.epochs=1)")
    p.add_argument("--name", default=None)


# ---------------------------------------------------------------------------------------------


def build_config(preset_name: str, overrides: list[str]) -> PipelineConfig:
    """The preset plus ``--set`` items, through the same parser and wildcard rule as the dashboard."""
    from sta_models.config_overrides import ConfigErrors, config_from_overrides, parse_set_options

    try:
        return config_from_overrides(preset_name, parse_set_options(overrides))
    except ConfigErrors as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    except ValueError as exc:  # an item without '='
        raise SystemExit(str(exc)) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from db.migrate import upgrade
    from stapipe_settings import get_settings

    settings = get_settings()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    from worker.stage_graph import Queue

    bad = set(queues) - set(Queue)
    if bad or not queues:
        print(f"unknown queue(s): {', '.join(sorted(bad)) or '(none)'}; use cpu and/or gpu", file=sys.stderr)
        return 2
    gpu_only = queues == ["gpu"]
    concurrency = args.concurrency or (1 if gpu_only else None)
    per_child = args.max_tasks_per_child if args.max_tasks_per_child is not None else (1 if gpu_only else 0)
    hostname = args.hostname or f"{'-'.join(queues)}@{socket.gethostname()}"
    upgrade(settings.db_url)
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", ",".join(queues),
            "-n", hostname, "-P", "prefork", "--loglevel", args.loglevel,
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if per_child:
        argv += ["--max-tasks-per-child", str(per_child)]
    from worker.supervise import supervise

    return supervise(argv)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from db.migrate import current, upgrade

    upgrade(args.url)
    print(f"database at revision {current(args.url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from db.migrate import current

    print(current(args.url) or "(empty)")
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop, a test) unwinds like Ctrl-C, so the stack is stopped."""
    import signal

    def raise_interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)


def _announce(settings: Any) -> None:
    from worker.embedded import dashboard_url, login_hint, wait_for_port

    url = dashboard_url(settings) + "/"
    ok = wait_for_port(settings.dashboard_host, settings.dashboard_port, timeout=60)
    print(f"dashboard: {url}" + ("" if ok else " (not answering yet)"), flush=True)
    print(login_hint(settings), flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from db.migrate import upgrade
    from stapipe_settings import get_settings
    from worker.embedded import local_stack

    settings = get_settings()
    upgrade(settings.db_url)
    _stop_on_sigterm()
    print(f"database: {settings.db_url}\nbroker: {settings.broker}", flush=True)
    with local_stack(settings, workers=args.workers, dashboard=not args.no_dashboard,
                     concurrency=args.concurrency) as stack:
        if not args.no_dashboard:
            _announce(settings)
        print(f"{args.workers} worker process(es) running; logs in {stack.log_dir}; Ctrl-C stops everything",
              flush=True)
        while not stack.dead():
            time.sleep(1)
        print(f"stopped: {', '.join(stack.dead())} exited", file=sys.stderr)
    return 1


def _submit(settings: Any, dataset: Path, preset_name: str, overrides: list[str], name: str | None) -> int:
    import getpass

    from db.migrate import upgrade
    from db.session import session_scope
    from worker.orchestration import submit_pipeline

    cfg = build_config(preset_name, overrides)
    upgrade(settings.db_url)
    with session_scope(settings.db_url) as session:
        p = submit_pipeline(session, name=name or f"{dataset.name}-{preset_name}", dataset_root=dataset,
                            config=cfg, submitted_by=f"cli:{getpass.getuser()}")
        reused = [s.kind for s in p.stages if s.reused_from_id]
        print(f"submitted pipeline {p.id} ({p.name}, preset {preset_name})", flush=True)
        if reused:
            print(f"reusing unchanged stages: {', '.join(reused)}", flush=True)
        return p.id


def _local_workers_needed(settings: Any) -> int:
    """On the embedded default with no worker online, ``stapipe run`` starts one itself (nothing
    else would ever consume its queues); elsewhere it uses the workers that are running."""
    from db.session import session_scope
    from worker.registry import queues_served

    if not settings.broker_is_embedded:
        return 0
    with session_scope(settings.db_url) as session:
        served = queues_served(session)
    from worker.stage_graph import Queue

    if set(Queue) <= served:
        return 0
    print("no worker is online on the embedded default: starting one for this run "
          "(`stapipe up` keeps workers running between runs)", flush=True)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from stapipe_settings import get_settings
    from worker.embedded import local_stack
    from worker.follow import follow

    settings = get_settings()
    dataset = args.dataset.expanduser().resolve()
    if not dataset.is_dir():
        print(f"{dataset}: not a folder", file=sys.stderr)
        return 2
    pid = _submit(settings, dataset, args.preset, args.overrides, args.name)
    _stop_on_sigterm()
    if args.no_follow:
        return 0
    workers = args.workers or _local_workers_needed(settings)
    with local_stack(settings, workers=workers, dashboard=False) as stack:
        state = follow(settings.db_url, pid, sys.stdout,
                       alive=(lambda: not stack.dead()) if workers else None)
    return 0 if state == "succeeded" else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from sta_models.synth import generate
    from stapipe_settings import get_settings
    from worker.embedded import local_stack
    from worker.follow import follow
    from worker.report import evaluation_table

    settings = get_settings()
    dataset = settings.data_dir / f"synthetic-{args.classes}x{args.videos_per_class}x{args.seconds}s"
    if not (dataset / "Annotations.txt").is_file():
        print(f"generating a synthetic dataset in {dataset} ...", flush=True)
        generate(dataset, classes=args.classes, videos_per_class=args.videos_per_class, seconds=args.seconds)
    _stop_on_sigterm()
    with local_stack(settings, workers=args.workers, dashboard=not args.no_dashboard,
                     concurrency=args.concurrency) as stack:
        pid = _submit(settings, dataset, args.preset, args.overrides, args.name or f"demo-{args.preset}")
        if not args.no_dashboard:
            _announce(settings)
        state = follow(settings.db_url, pid, sys.stdout, alive=lambda: not stack.dead())
        print(evaluation_table(settings.db_url, pid), flush=True)
        if not args.no_dashboard and not args.exit and not stack.dead():
            _keep_serving(settings, pid, stack)
    return 0 if state == "succeeded" else 1


def _keep_serving(settings: Any, pipeline_id: int, stack: Any) -> None:
    """After the demo: leave the dashboard (and the workers, for re-runs) up until Ctrl-C."""
    from worker.embedded import dashboard_url

    try:
        print(f"\nThe dashboard keeps running: {dashboard_url(settings)}/pipelines/{pipeline_id} "
              "(workers too, so you can re-run stages or submit more pipelines from it).\n"
              "Press Ctrl-C to stop everything; `stapipe up` brings it back later.", flush=True)
        while not stack.dead():
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the dashboard and the workers ...", flush=True)
