"""Job-system overhead: extraction through the queue vs a plain process pool, and per-stage cost.

    .venv/bin/python bench/bench_queue.py [--videos 200] [--procs 2] [--seconds 2]

Measures, on the broker/database from the STAPIPE_* settings (default: the embedded SQLite +
filesystem broker in a temporary home):
1. time from submit to the first extraction task starting;
2. extraction of N short synthetic videos through the queue (one Celery task per video, a worker
   with ``--concurrency procs``) vs ``extract_video`` in a ``ProcessPoolExecutor(procs)``;
   overhead ratio = queue wall time / pool wall time (target <= 1.15); with ``--repeat N`` the two
   are measured N times alternately on the same clips and the median ratio is reported (the
   machine is shared, so one pair can be off by 10 %);
3. orchestration overhead per stage: claim + finish + advance against the database, in process
   (no library work), and the broker latency queued -> started observed for the extract stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _extract(args: tuple[str, str, int, str]) -> None:
    from sta_models.extraction import extract_video

    video, out, size, vid = args
    extract_video(video, out, size=size, video_id=vid)


def direct(dataset: Path, out: Path, size: int, procs: int) -> float:
    videos = sorted((dataset / "AVE").glob("*.mp4"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(procs) as pool:
        list(pool.map(_extract, [(str(v), str(out / f"{v.stem}.h5"), size, v.stem) for v in videos]))
    return time.perf_counter() - t0


def _ts(dt: datetime) -> float:
    from datetime import UTC

    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def through_queue(dataset: Path, home: Path, size: int, procs: int) -> dict[str, float]:
    from sqlalchemy import select

    from db.migrate import upgrade
    from db.models import ExtractionItem, Stage
    from db.session import session_scope
    from sta_models.config import preset
    from stapipe_settings import get_settings
    from worker import orchestration as orch

    settings = get_settings()
    upgrade(settings.db_url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = (home / "bench-worker.log").open("ab")
    # cpu queue only: the training stages after extraction stay queued and are cancelled below
    worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker", "--queues", "cpu", "--concurrency",
                               str(procs), "--hostname", "bench@local", "--loglevel", "WARNING"],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(8)  # worker boot (migrations, Celery, pool) is not what we measure
        cfg = preset("tiny")
        cfg.extract.size = size
        cfg.extract.min_success_fraction = 0.0
        t_submit = time.time()
        with session_scope(settings.db_url) as s:
            pid = orch.submit_pipeline(s, name="bench", dataset_root=dataset, config=cfg, submitted_by="bench",
                                       reuse=False).id
        while True:
            with session_scope(settings.db_url) as s:
                st = s.scalars(select(Stage).where(Stage.pipeline_id == pid, Stage.kind == "extract")).one()
                if st.status in ("succeeded", "failed"):
                    items = s.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == st.id)).all()
                    break
            time.sleep(0.2)
        with session_scope(settings.db_url) as s:
            orch.cancel_pipeline(s, pid)
        starts = [_ts(i.updated_at) - (i.seconds or 0) for i in items]
        ends = [_ts(i.updated_at) for i in items]
        return {
            "submit_to_stage_start": _ts(st.started_at) - t_submit,
            "submit_to_first_item": min(starts) - t_submit,
            "queue_wall": max(ends) - _ts(st.started_at),
            "items_ok": sum(i.status == "succeeded" for i in items),
            "items": len(items),
            "item_mean_s": statistics.mean(i.seconds or 0 for i in items),
        }
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()
        log.close()


def orchestration_overhead(dataset: Path, rounds: int = 3) -> dict[str, float]:
    """Claim + final UPDATE + advance for all 13 stages with the dispatcher recording, not sending."""
    from sqlalchemy import update

    from db.models import Stage, utcnow
    from db.session import session_scope
    from sta_models.config import preset
    from stapipe_settings import get_settings
    from worker import orchestration as orch
    from worker.stage_runner import claim_stage

    url = get_settings().db_url
    sent: list[tuple] = []
    old = orch.set_dispatcher(lambda *m: sent.append(m))
    per_stage: list[float] = []
    submit_s: list[float] = []
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            with session_scope(url) as s:
                pid = orch.submit_pipeline(s, name="overhead", dataset_root=dataset, config=preset("tiny"),
                                           submitted_by="bench", reuse=False).id
            submit_s.append(time.perf_counter() - t0)
            done = 0
            while done < 13:
                msgs, sent[:] = list(sent), []
                for _what, stage_id, _queue, token in msgs:
                    t0 = time.perf_counter()
                    with session_scope(url) as s:
                        claim_stage(s, stage_id, token, "bench", 3)
                        s.execute(update(Stage).where(Stage.id == stage_id).values(
                            status="succeeded", finished_at=utcnow()))
                        s.commit()
                        orch.advance(s, pid)
                    per_stage.append(time.perf_counter() - t0)
                    done += 1
    finally:
        orch.set_dispatcher(old)
    return {"submit_ms": 1000 * statistics.median(submit_s), "per_stage_ms": 1000 * statistics.median(per_stage),
            "per_stage_p95_ms": 1000 * sorted(per_stage)[int(0.95 * (len(per_stage) - 1))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeat", type=int, default=1, help="alternate direct/queue this many times (median ratio)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="stapipe-bench-"))
    os.environ.setdefault("STAPIPE_HOME", str(home))
    from sta_models.synth import generate
    from stapipe_settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    classes = 10
    per_class = -(-args.videos // classes)
    t0 = time.perf_counter()
    dataset = generate(home / "data" / "bench", classes=classes, videos_per_class=per_class, seconds=args.seconds,
                       size=(64, 48), seed=1)
    n = len(list((dataset / "AVE").glob("*.mp4")))
    print(f"generated {n} videos of {args.seconds} s in {time.perf_counter() - t0:.0f} s "
          f"(db {settings.db_url.split('://')[0]}, broker {settings.broker.split('://')[0]})", flush=True)

    ratios: list[float] = []
    for r in range(args.repeat):
        t_direct = direct(dataset, home / f"direct{r}", args.size, args.procs)  # fresh outputs each round
        print(f"[{r + 1}] direct pool ({args.procs} procs): {t_direct:.1f} s = {n / t_direct:.1f} videos/s", flush=True)
        q = through_queue(dataset, home, args.size, args.procs)
        print(f"[{r + 1}] queue ({args.procs} procs): {q['queue_wall']:.1f} s = {q['items'] / q['queue_wall']:.1f} "
              f"videos/s ({q['items_ok']}/{q['items']} ok, {q['item_mean_s']:.2f} s per video)", flush=True)
        ratios.append(q["queue_wall"] / t_direct)
        print(f"[{r + 1}] overhead ratio queue/direct: {ratios[-1]:.2f}; queue cost per video per process "
              f"{1000 * (q['queue_wall'] - t_direct) * args.procs / n:.0f} ms", flush=True)
    print(f"overhead ratio queue/direct: {statistics.median(ratios):.2f} (median of {len(ratios)}: "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; target <= 1.15)")
    print(f"submit -> extract stage claimed: {q['submit_to_stage_start']:.2f} s; "
          f"submit -> first extraction task started: {q['submit_to_first_item']:.2f} s")
    o = orchestration_overhead(dataset)
    print(f"orchestration in process: submit (13 stages + hashes) {o['submit_ms']:.0f} ms; per stage "
          f"claim+finish+advance median {o['per_stage_ms']:.1f} ms, p95 {o['per_stage_p95_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
