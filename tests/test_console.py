"""What a run prints: worker lines relayed in order, progress lines only on a terminal, a training
failure as one line. The quiet default is checked on the README's commands (tests/test_readme.py),
`--verbose` bringing back Ray's and the workers' output on the submitted job (tests/test_job_submit.py)."""
import pytest
import ray
from ray.train import WorkerGroupError

from lifelong.cluster import logs
from lifelong.jobs.cli import training_error


def test_worker_lines_reach_the_driver_in_order_and_progress_only_on_a_terminal(ray_local, capsys):
    @ray.remote(num_cpus=0)
    def worker(sink) -> None:
        logs.use(sink)
        for i in range(5):
            logs.say(f"line {i}")
            logs.say(f"progress {i}", transient=True)

    with logs.relayed(poll_s=0.05) as sink:
        assert sink is not None
        ray.get(worker.remote(sink))
    out = capsys.readouterr().out.splitlines()
    assert out == [f"line {i}" for i in range(5)]  # not a terminal: no progress lines


def test_progress_lines_replace_each_other_on_a_terminal(capsys):
    printer = logs._Printer()
    printer.tty = True
    printer.show("step 1", True)
    printer.show("step 2", True)
    printer.show("epoch 0 done", False)
    assert capsys.readouterr().out == "step 1\r\x1b[Kstep 2\r\x1b[Kepoch 0 done\n"


def test_verbose_workers_print_and_no_relay_is_made(monkeypatch, capsys):
    monkeypatch.setenv(logs.ENV, "1")
    with logs.relayed() as sink:
        assert sink is None
    logs.use(None)
    logs.say("plain")
    logs.say("bar", transient=True)
    assert capsys.readouterr().out == "plain\n"


def test_a_training_failure_is_one_line_naming_the_ranks_and_the_cause():
    cause = RuntimeError("Traceback (most recent call last):\n  File x\nValueError: table 'item': bad\n")
    line = training_error(WorkerGroupError("Training failed due to worker errors", {1: cause, 0: cause}))
    assert line.startswith("training worker rank(s) [0, 1]: ValueError: table 'item': bad")
    assert "\n" not in line and "--debug" in line


@pytest.mark.parametrize("types,expect", [(["row_wise", "data_parallel"], ["row_wise"]), (None, None)])
def test_cpu_plans_never_use_data_parallel_sequence_tables(types, expect):
    from lifelong.embeddings.plan import constraints_from_config

    got = constraints_from_config({"item": types} if types else {}, "cpu", every_table=["item", "cat"])
    assert set(got) == {"item", "cat"}
    assert all("data_parallel" not in c.sharding_types for c in got.values())
    if expect:
        assert got["item"].sharding_types == expect
    with pytest.raises(ValueError, match=r"table 'item': data_parallel cannot be used on cpu: .*one row per bag"):
        constraints_from_config({"item": ["data_parallel"]}, "cpu")
    assert constraints_from_config({"item": ["data_parallel"]}, "cuda")["item"].sharding_types == ["data_parallel"]


def test_cpu_data_parallel_replicates_whole_collections():
    from lifelong.embeddings.plan import describe, make_plan, replicated_collections
    from lifelong.trainers.model_setup import build
    from tests.helpers import tiny_job, tiny_samples

    _, meta = tiny_samples()
    model = build(tiny_job("sim_soft", meta, {"k": 6}), "meta")  # main: item, cat; side: search_item, search_cat
    dp = ["data_parallel"]
    assert replicated_collections(model, {"search_item": dp, "search_cat": dp, "item": ["row_wise"]}, "cpu") == {
        "sparse.side_embeddings": ("search_item", "search_cat")}
    assert replicated_collections(model, {"item": dp, "cat": dp}, "cuda") == {}  # TorchRec's own there
    assert replicated_collections(model, {t: ["data_parallel", "row_wise"] for t in ("item", "cat")}, "cpu") == {}
    with pytest.raises(ValueError, match=r"'sparse.embeddings' has tables \['item', 'cat'\], of which only \['item'\]"):
        replicated_collections(model, {"item": dp}, "cpu")
    plan = make_plan(model, 2, "cpu", 16, {"search_item": dp, "search_cat": dp})
    assert set(plan.plan) == {"sparse.embeddings"} and set(plan.replicated) == {"sparse.side_embeddings"}
    text = describe(plan)
    assert "sparse.side_embeddings.search_cat: data_parallel (replicated" in text and "sparse.embeddings.item:" in text
    # a CPU run file asking it of part of a collection is refused before any worker starts
    from lifelong.jobs.config import RunFile
    from lifelong.jobs.train import job_spec

    with pytest.raises(ValueError, match=r"'sparse.embeddings' has tables \['item', 'cat', 'user'\]"):
        job_spec(RunFile(sharding={"item": dp}), meta)
    assert job_spec(RunFile(sharding={"item": dp, "cat": dp, "user": dp}), meta).sharding["user"] == dp


def test_small_unconstrained_collections_are_replicated_on_cpu_all_or_none():
    from lifelong.embeddings.plan import make_plan, replicated_collections, weight_mb
    from lifelong.trainers.model_setup import build, cache_constraints
    from tests.helpers import tiny_job, tiny_samples

    _, meta = tiny_samples()
    job = tiny_job("twin", meta, {"k": 6}, key_cache_every=4)  # main, and the key cache of projected keys
    model = build(job, "meta")
    every = {"sparse.embeddings": ("item", "cat"),
             "sparse.key_cache": ("item_key", "cat_key", "item_query", "cat_query")}
    total = weight_mb(model.sparse.embeddings) + weight_mb(model.sparse.key_cache)
    assert replicated_collections(model, {}, "cpu", replicate_mb=total) == every
    assert replicated_collections(model, {}, "cpu", replicate_mb=0.99 * total) == {}  # over the cap: none, not part
    assert replicated_collections(model, {}, "cpu", replicate_mb=0.0) == {}
    assert replicated_collections(model, {}, "cuda", replicate_mb=total) == {}  # the planner decides there
    # a table the run file names sends every collection to the planner; its key cache follows it
    named = cache_constraints(type(job)(**{**job.__dict__, "sharding": {"item": ["row_wise"]}}))
    assert replicated_collections(model, named, "cpu", replicate_mb=total) == {}
    plan = make_plan(model, 2, "cpu", 16, {}, replicate_mb=total)
    assert plan.plan == {} and plan.replicated == every
