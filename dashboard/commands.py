"""``stapipe dashboard`` (development server) and the API client commands
``stapipe submit / status / rerun / cancel``, which talk to a running dashboard over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sta_models.config import DEFAULT_PRESET, PRESETS
from stapipe_settings import get_settings


def register(sub: Any) -> None:
    settings_help = "(default: STAPIPE_API_URL, else the address `stapipe up` wrote to $STAPIPE_HOME/dashboard_url)"

    p = sub.add_parser("dashboard", help="serve the dashboard (development server; use gunicorn in production)")
    p.add_argument("--host", default=None, help="address (default: STAPIPE_DASHBOARD_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default: STAPIPE_DASHBOARD_PORT)")
    p.set_defaults(func=cmd_dashboard)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help=f"dashboard URL {settings_help}")
        p.add_argument("--token", default=None,
                       help="API token (default: STAPIPE_DASHBOARD_PASSWORD, else $STAPIPE_HOME/dashboard_token)")

    p = sub.add_parser("submit", help="submit a pipeline through the dashboard API")
    p.add_argument("--dataset", required=True, help="dataset folder inside the data root")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
    p.add_argument("--name", default=None, help="pipeline name (default: the dataset folder's name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. coarse.s.epochs=3 or 'coarse.*.lr=0.001' (repeatable)")
    client_args(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="list pipelines, or show one pipeline's stages")
    p.add_argument("pipeline_id", nargs="?", type=int)
    client_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rerun", help="re-run a failed or cancelled stage (and its downstream stages)")
    p.add_argument("stage_id", type=int)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    client_args(p)
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("cancel", help="cancel a pipeline")
    p.add_argument("pipeline_id", type=int)
    client_args(p)
    p.set_defaults(func=cmd_cancel)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .app import create_app

    settings = get_settings()
    app = create_app(settings)
    host = args.host or settings.dashboard_host
    port = args.port or settings.dashboard_port
    from worker.embedded import clear_url, write_url

    url = f"http://{host}:{port}"
    print(f"stapipe dashboard on {url}/ (development server)", flush=True)
    write_url(settings, url)
    try:
        app.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
    finally:
        clear_url(settings, url)
    return 0


def _endpoint(args: argparse.Namespace) -> Any:
    from .endpoint import resolve

    return resolve(get_settings(), args.url, args.token)


def _client(args: argparse.Namespace) -> Any:
    from .client import ApiClient

    endpoint = _endpoint(args)
    return ApiClient(endpoint.url, endpoint.token)


def _run(fn: Any, args: argparse.Namespace | None = None) -> int:
    from .client import ApiError
    from .endpoint import explain

    try:
        return fn()
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        hint = explain(_endpoint(args), exc.status) if args is not None else None
        if hint:
            print(hint, file=sys.stderr)
        return 1


def _dataset_arg(value: str) -> str:
    """A folder that exists here is sent absolute (the server checks it is inside its data root);
    anything else is sent as typed, i.e. relative to the server's data root."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_dir() else value


def _print_pipeline_row(p: dict[str, Any]) -> None:
    prog = p["progress"]
    videos = f"{prog['videos_done']}/{prog['videos_total']}" + (
        f" ({prog['videos_failed']} failed)" if prog["videos_failed"] else "")
    print(f"{p['id']:>5}  {p['status']:<10} {prog['stages_done']:>2}/{prog['stages_total']:<3} "
          f"{videos:<16} {p['name']}")


def cmd_submit(args: argparse.Namespace) -> int:
    from sta_models.config_overrides import parse_set_option

    overrides: dict[str, Any] = {}
    for item in args.overrides:
        try:
            key, value = parse_set_option(item)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        overrides[key] = value
    name = args.name or Path(args.dataset).name or "pipeline"

    def go() -> int:
        client = _client(args)
        print(_estimate_line(client, _dataset_arg(args.dataset), args.preset, overrides), flush=True)
        p = client.submit(name, _dataset_arg(args.dataset), args.preset, overrides)
        reused = p["progress"]["stages_reused"]
        print(f"submitted pipeline {p['id']} ({p['name']}, preset {p['preset']})"
              + (f"; {reused} stage(s) reused from an earlier run" if reused else ""))
        print(f"{_endpoint(args).url}{p['url']}")
        return 0

    return _run(go, args)


def _estimate_line(client: Any, dataset: str, preset: str, overrides: dict[str, Any]) -> str:
    """One line: the disk the pipeline will keep (or why there is no estimate; submitting goes on)."""
    from .client import ApiError
    from .formatting import human_size

    try:
        est = client.estimate(dataset, preset, overrides)
    except ApiError as exc:
        return f"disk estimate: unavailable ({exc})"
    top = sorted(est["stages"].items(), key=lambda kv: -kv[1])[:3]
    return (f"disk estimate: {human_size(est['bytes'])} for {est['dataset']['videos']} videos "
            f"({est['dataset']['video_seconds']} s); largest: " + ", ".join(f"{k} {human_size(v)}" for k, v in top))


def cmd_status(args: argparse.Namespace) -> int:
    def go() -> int:
        client = _client(args)
        if args.pipeline_id is None:
            page = client.pipelines(per_page=50)
            print(f"{'id':>5}  {'status':<10} stages videos           name")
            for p in page["items"]:
                _print_pipeline_row(p)
            if page["total"] > len(page["items"]):
                print(f"({len(page['items'])} of {page['total']} shown)")
            return 0
        p = client.pipeline(args.pipeline_id)
        _print_pipeline_row(p)
        print(f"{'stage':>7}  {'kind':<16} {'status':<10} {'att':>3}  {'duration':>9}  note")
        for s in p["stages"]:
            dur = f"{s['duration_s']:.0f}s" if s["duration_s"] is not None else "-"
            note = "reused from earlier run" if s["reused_from_id"] else (s["error_summary"] or "")
            print(f"{s['id']:>7}  {s['kind']:<16} {s['status']:<10} {s['attempts']:>3}  {dur:>9}  {note}")
        return 0 if p["status"] != "failed" else 3

    return _run(go, args)


def cmd_rerun(args: argparse.Namespace) -> int:
    def go() -> int:
        client = _client(args)
        plan = client.rerun_plan(args.stage_id)
        if not plan["rerunnable"]:
            stage = client.stage(args.stage_id)
            print(f"error: stage {args.stage_id} is {stage['status']}; only failed or cancelled stages "
                  "can be re-run", file=sys.stderr)
            return 1
        print("these stages will run again: " + ", ".join(s["kind"] for s in plan["stages"]))
        if not args.yes:
            if not sys.stdin.isatty():
                print("error: not a terminal, so nobody can confirm; add --yes to re-run these stages",
                      file=sys.stderr)
                return 2
            answer = input("re-run? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("not re-run")
                return 1
        result = client.rerun(args.stage_id)
        print(f"re-running {len(result['stages'])} stage(s)")
        return 0

    return _run(go, args)


def cmd_cancel(args: argparse.Namespace) -> int:
    def go() -> int:
        p = _client(args).cancel(args.pipeline_id)
        print(f"pipeline {p['id']} is {p['status']}; unfinished stages cancelled")
        return 0

    return _run(go, args)
