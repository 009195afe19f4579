"""The Celery app: transport only. Stage state lives in SQL (worker.orchestration).

Every setting below is chosen for hour-long GPU stages; docs/decisions.md repeats the reasons.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from stapipe_settings import Settings, get_settings
from worker.stage_graph import Queue

log = logging.getLogger(__name__)

QUEUES: tuple[str, ...] = tuple(str(q) for q in Queue)
TASK_STAGE = "stapipe.run_stage"
TASK_ITEM = "stapipe.extract_item"


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker."""
    if settings.broker_is_embedded:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            # one folder for in and out: every process both produces and consumes
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            # kombu claims a message by moving its file; inside the same file system that is an
            # atomic rename, so two workers never both get it (the default, /tmp, may be another
            # file system, where the move is a copy + delete and two consumers can both read it)
            "store_processed": True,
            "processed_folder": str(folder / "processed"),
            "polling_interval": 0.01,
        }
    # Redis: a message delivered but not acknowledged (acks_late → until the task ends) goes
    # back to the queue after visibility_timeout. It must exceed the longest stage, or hour-long
    # trainings are started a second time; the DB heartbeat (recover_stale) recovers lost work
    # much sooner than this, so a long value costs nothing.
    return {"visibility_timeout": visibility_timeout(settings)}


def visibility_timeout(settings: Settings) -> int:
    return settings.task_time_limit_s + 3600


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("stapipe", broker=settings.broker, include=["worker.tasks"])
    opts = broker_options(settings)
    app.conf.update(
        broker_transport_options=opts,
        # the visibility timeout must be set in all three places or Celery silently keeps 1 h
        # for some of them (celery/celery#7651); the shortest value wins across apps
        result_backend_transport_options={"visibility_timeout": opts.get("visibility_timeout", 0)}
        if "visibility_timeout" in opts else {},
        visibility_timeout=opts.get("visibility_timeout"),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # wait for Redis to come back instead of exiting
        # messages are JSON with ids only: no pickle, nothing the DB doesn't already hold
        task_serializer="json",
        accept_content=["json"],
        # status, metrics and outputs live in SQL; no result backend to fill up
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=str(Queue.CPU),
        task_create_missing_queues=True,
        # ack after the task ran: a worker SIGKILLed mid-stage leaves the message unacked, so it
        # is delivered again (Redis) — the DB claim token drops duplicates, attempts cap loops
        task_acks_late=True,
        # ...and also when only the pool child dies (OOM killer, segfault): without this Celery
        # acks the message of a lost child and the stage would wait for the heartbeat reaper
        task_reject_on_worker_lost=True,
        # a worker process reserves no second message: an idle GPU worker must be able to take
        # the next training instead of it waiting hours behind a busy one
        worker_prefetch_multiplier=1,
        # hard limit from the settings (default 48 h); the soft limit raises inside the task a
        # minute earlier so it can record the failure. Prefork pool only — which we use.
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=max(settings.task_time_limit_s - 60, 30),
        # keep a long training running through a broker blip (a Redis restart): the DB token
        # makes the redelivered copy wait for the heartbeat to go stale instead of running twice
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # prefork with fork: the parent never imports torch (task bodies import sta_models
        # lazily), so each child initialises CUDA itself; GPU workers also use
        # --max-tasks-per-child 1 (see worker.commands) so every stage gets a fresh CUDA context
        worker_pool="prefork",
        worker_pool_start_method="fork",
        worker_send_task_events=False,
        # remote control is a fanout: on the filesystem broker every dead worker's pidbox queue
        # would keep collecting broadcast files; nothing in stapipe uses it (cancel goes via SQL)
        worker_enable_remote_control=not settings.broker_is_embedded,
        worker_hijack_root_logger=False,
        broker_pool_limit=4,
    )
    return app


app = make_app()
_producers: dict[tuple[str, str], Celery] = {}


def producer_app(settings: Settings | None = None) -> Celery:
    """The app to send with for the *current* settings (the module-level ``app`` was built at
    import time; a process whose settings changed since — tests, the dashboard — needs its own)."""
    settings = settings or get_settings()
    key = (settings.broker, str(settings.broker_folder / "queue") if settings.broker_is_embedded else "")
    if key == (app.conf.broker_url, app.conf.broker_transport_options.get("data_folder_in", "")):
        return app
    if key not in _producers:
        _producers[key] = make_app(settings)
    return _producers[key]


def send(what: str, obj_id: int, queue: str, token: str) -> None:
    """Send "run stage N" / "extract item N" with ``token`` as the task id (the claim token)."""
    name = TASK_STAGE if what == "stage" else TASK_ITEM
    producer_app().send_task(name, args=[obj_id], queue=queue, task_id=token, ignore_result=True)


def message_exists(settings: Settings | None = None) -> Callable[[str, str], bool]:
    """A ``(queue, token) -> bool`` check of whether the broker still holds a task message
    (waiting or delivered-unacked); used to re-send queued stages whose message vanished."""
    settings = settings or get_settings()
    if settings.broker_is_embedded:
        folder = Path(settings.broker_folder) / "queue"

        def fs_exists(queue: str, token: str) -> bool:
            for f in folder.glob(f"*.{queue}.msg"):
                try:
                    if token in f.read_text(errors="replace"):
                        return True
                except OSError:
                    continue
            return False

        return fs_exists

    import redis
    from kombu.transport.redis import PRIORITY_STEPS

    client = redis.Redis.from_url(settings.broker)

    def redis_exists(queue: str, token: str) -> bool:
        try:
            return _redis_exists(queue, token)
        except redis.RedisError:  # broker away: assume the message is there, re-check next round
            return True

    def _redis_exists(queue: str, token: str) -> bool:
        # kombu's Redis transport keeps a queue as one list per priority step ("<queue>", then
        # "<queue>\x06\x16<step>" for steps 3, 6, 9) and delivered-unacked messages in the
        # "unacked" hash: read exactly those keys, never a scan of the keyspace (KEYS blocks Redis)
        needle = token.encode()
        for key in (queue, *(f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS[1:])):
            if client.type(key) == b"list" and any(needle in m for m in client.lrange(key, 0, -1)):
                return True
        return any(needle in v for v in client.hvals("unacked"))

    return redis_exists


def purge_processed(settings: Settings, older_than_s: float = 3600) -> int:
    """Delete consumed messages of the filesystem broker (kept there only for the atomic move)."""
    import time

    if not settings.broker_is_embedded:
        return 0
    n = 0
    cutoff = time.time() - older_than_s
    for f in (settings.broker_folder / "processed").glob("*.msg"):
        try:
            if f.stat().st_mtime < cutoff:
                f.unlink()
                n += 1
        except OSError:
            pass
    return n


__all__ = ["app", "make_app", "send", "message_exists", "QUEUES", "TASK_STAGE", "TASK_ITEM"]
