"""The stage registry: the graph check on load, inputs by name, and a test-only graph with a kind of
its own run through the real orchestration (submit → advance → the task layer's stage and item
runners → success, artefacts recorded) without touching the production graph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from db.migrate import upgrade
from db.models import Artefact, ExtractionItem, Pipeline, Stage
from db.session import session_scope
from sta_models.config import preset
from worker import orchestration as orch
from worker.stage_context import Inputs, ItemJob, StageContext, UndeclaredInput
from worker.stage_graph import FanOut, GraphError, Queue, StageGraph
from worker.stages import GRAPH, KINDS
from worker.tasks import run_item_message, run_stage_message


def _noop(ctx: StageContext) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# the check on load


@pytest.mark.parametrize(("build", "message"), [
    (lambda g: g.stage("b", queue=Queue.CPU, depends_on=("a",))(_noop),
     "t: stage b depends on 'a', which is not declared"),
    (lambda g: (g.stage("a", queue=Queue.CPU, depends_on=("b",))(_noop),
                g.stage("b", queue=Queue.CPU, depends_on=("a",))(_noop)),
     "t: dependency cycle a → b → a"),
    (lambda g: (g.stage("a", queue=Queue.CPU)(_noop), g.stage("b", queue=Queue.CPU)(_noop),
                g.stage("c", queue=Queue.CPU, depends_on=("a",), inputs=("b",))(_noop)),
     "t: stage c reads input 'b', which is not upstream of it (add it to depends_on or to a dependency's)"),
    (lambda g: g.stage("a", queue=Queue.CPU, inputs=("z",))(_noop),
     "t: stage a reads input 'z', which is not declared"),
    (lambda g: (g.stage("a", queue=Queue.CPU, optional=True)(_noop),
                g.stage("b", queue=Queue.CPU, depends_on=("a",))(_noop)),
     "t: required stage b depends on optional stage a"),
])
def test_a_broken_graph_is_refused_with_one_line(build, message: str) -> None:  # noqa: ANN001
    g = StageGraph("t")
    build(g)
    with pytest.raises(GraphError) as info:
        g.check()
    assert str(info.value) == message and "\n" not in message


def test_a_kind_declared_twice_or_without_a_body_is_refused() -> None:
    from worker.stage_graph import StageSpec

    g = StageGraph("t")
    g.stage("a", queue=Queue.CPU)(_noop)
    with pytest.raises(GraphError, match="^t: stage kind 'a' declared twice$"):
        g.stage("a", queue=Queue.GPU)
    g.add(StageSpec("b", Queue.CPU))
    with pytest.raises(GraphError, match="^t: stage b has no body$"):
        g.check()


def test_the_graph_orders_kinds_topologically() -> None:
    g = StageGraph("t")
    g.stage("late", queue=Queue.CPU, depends_on=("early",))(_noop)
    g.stage("early", queue=Queue.CPU)(_noop)
    assert g.kinds == ("early", "late") and g.downstream_of("early") == ["early", "late"]


def test_inputs_are_read_by_name_and_only_when_declared(tmp_path: Path) -> None:
    inputs = Inputs("crops", ("extract",), {"extract": tmp_path / "x", "train_sta": tmp_path / "y"})
    assert inputs["extract"] == tmp_path / "x" and list(inputs) == ["extract"]
    with pytest.raises(UndeclaredInput) as info:
        inputs["train_sta"]
    assert str(info.value) == "stage crops reads 'train_sta', which is not among its declared inputs ['extract']"


# ---------------------------------------------------------------------------------------------
# the production graph


def test_the_production_graph_is_the_documented_one() -> None:
    assert KINDS == ("extract", "train_s_coarse", "train_sa_coarse", "train_st_coarse", "cams_coarse", "crops",
                     "train_s_fine", "train_sa_fine", "train_st_fine", "cams_fine", "pseudo_gt", "train_sta",
                     "evaluate")
    assert [s.kind for s in GRAPH.optional] == ["benchmark"] and GRAPH.fan_out_kinds == ("extract",)
    assert {s.kind for s in GRAPH if s.queue == Queue.CPU} == {"extract", "crops", "pseudo_gt"}
    # what stage_runner.artefact_kind's per-kind map said before the registry
    cases = {("extract", "v.h5"): "features", ("crops", "r.h5"): "crops", ("pseudo_gt", "r.h5"): "pseudo_gt",
             ("cams_coarse", "s/r.h5"): "cams", ("cams_fine", "s/r.h5"): "cams", ("train_sta", "x.h5"): "data",
             ("evaluate", "predictions/v/0001.png"): "prediction", ("evaluate", "preview/a.png"): "preview",
             ("crops", "previews/a.png"): "preview", ("train_s_coarse", "best.pt"): "checkpoint",
             ("evaluate", "metrics.json"): "metrics", ("evaluate", "table.csv"): "report",
             ("evaluate", "v.mp4"): "video", ("extract", "x.log"): "log", ("extract", "x.bin"): "file"}
    assert {k: GRAPH[k[0]].artefact_kind(Path(k[1])) for k in cases} == cases


def test_every_stage_body_reads_only_declared_inputs() -> None:
    """Each body's ``ctx.inputs[...]`` names (from its source) are among its declaration's inputs."""
    import ast
    import inspect
    import textwrap

    for spec in GRAPH:
        src = textwrap.dedent(inspect.getsource(spec.body))
        names = {n.slice.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Subscript)
                 and isinstance(n.value, ast.Attribute) and n.value.attr == "inputs"
                 and isinstance(n.slice, ast.Constant)}
        assert names <= set(spec.inputs), (spec.kind, names - set(spec.inputs))


# ---------------------------------------------------------------------------------------------
# a kind of a test-only graph, through the real orchestration


def _count_graph() -> StageGraph:
    """``letters`` fans out one item per letter (each writes ``<letter>.txt``); ``count`` reads
    them by name and writes ``count.json``; ``peek`` reads an input it did not declare."""
    g = StageGraph("test-only")

    def write_letter(job: ItemJob) -> None:
        (job.output_dir / f"{job.key}.txt").write_text(job.key * 3)

    fan = FanOut(run=write_letter, output=lambda job: job.output_dir / f"{job.key}.txt",
                 min_success=lambda config: 1.0, unit="letters", done="written", report="letters.json")

    @g.stage("letters", queue=Queue.CPU, config=(("split_seed",),), fan_out=fan, artefacts={".txt": "letter"})
    def letters(ctx: StageContext) -> list[str]:
        return ["a", "b", "c"]

    @g.stage("count", queue=Queue.GPU, depends_on=("letters",), inputs=("letters",), artefacts={".json": "x"})
    def count(ctx: StageContext) -> None:
        n = sum(len(p.read_text()) for p in ctx.inputs["letters"].glob("*.txt"))
        (ctx.output_dir / "count.json").write_text(json.dumps({"chars": n}))
        ctx.summary = {"chars": n}

    @g.stage("peek", queue=Queue.CPU, depends_on=("count",), inputs=("count",))
    def peek(ctx: StageContext) -> None:
        ctx.inputs["letters"]  # upstream, but not declared: refused

    return g.check()


def _run_all(url: str, recorder, graph: StageGraph) -> list[str]:  # noqa: ANN001
    """Run every recorded message the way the Celery tasks do, until none is left."""
    outcomes = []
    while recorder.messages:
        what, obj_id, _queue, token = recorder.messages.pop(0)
        if what == "stage":
            outcomes.append(run_stage_message(url, obj_id, token, "w@test", 3, graph=graph))
        else:
            outcomes.append(run_item_message(url, obj_id, token, "w@test", graph=graph))
    return outcomes


def test_a_test_only_stage_kind_runs_through_the_real_orchestration(home: Path, sqlite_url: str, tmp_path: Path,
                                                                     monkeypatch, recorder) -> None:  # noqa: ANN001
    from stapipe_settings import get_settings

    monkeypatch.setenv("STAPIPE_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    upgrade(sqlite_url)
    graph = _count_graph()
    dataset = tmp_path / "ds"
    dataset.mkdir()
    with session_scope(sqlite_url) as s:
        pid = orch.submit_pipeline(s, name="own", dataset_root=dataset, config=preset("tiny"), graph=graph).id
    assert [m[2] for m in recorder.messages] == ["cpu"]  # only the root stage is enqueued

    outcomes = _run_all(sqlite_url, recorder, graph)
    assert outcomes == ["fanout", "succeeded", "succeeded", "succeeded", "succeeded", "failed"], outcomes
    with session_scope(sqlite_url) as s:
        stages = {st.kind: st for st in s.scalars(select(Stage).where(Stage.pipeline_id == pid).order_by(Stage.position))}
        assert list(stages) == ["letters", "count", "peek"]
        letters, count, peek = stages["letters"], stages["count"], stages["peek"]
        assert letters.status == count.status == "succeeded" and count.queue == "gpu"
        assert letters.summary == {"letters": 3, "written": 3, "failed": 0, "failures": {}}
        assert (letters.progress_done, letters.progress_total, letters.progress_what) == (3, 3, "letters")
        items = s.scalars(select(ExtractionItem).where(ExtractionItem.stage_id == letters.id)).all()
        assert sorted(i.video_id for i in items) == ["a", "b", "c"] and {i.status for i in items} == {"succeeded"}
        arts = {(a.stage_id, Path(a.path).name): a.kind for a in s.scalars(select(Artefact))}
        assert arts == {(letters.id, "a.txt"): "letter", (letters.id, "b.txt"): "letter",
                        (letters.id, "c.txt"): "letter", (letters.id, "letters.json"): "report",
                        (count.id, "count.json"): "report"}
        assert count.summary == {"chars": 9}
        assert peek.status == "failed" and peek.error_summary == (
            "UndeclaredInput: stage peek reads 'letters', which is not among its declared inputs ['count']")
        assert s.get(Pipeline, pid).status == "failed"
    assert "letters" not in GRAPH and KINDS[0] == "extract"  # the production graph is untouched
