"""Shipped run files load and validate; bad keys are named."""
from pathlib import Path

import pytest

from lifelong.jobs.compare import model_run
from lifelong.jobs.config import config_for, load_run_file, run_file

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    run = load_run_file(path)
    assert run.samples.short_len <= run.samples.max_len


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"section 'train'.*\['lr'\]"):
        run_file({"train": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\]"):
        run_file({"modle": "din"})
    with pytest.raises(ValueError, match=r"data.format 'csv'"):
        run_file({"data": {"format": "csv"}})
    with pytest.raises(ValueError, match=r"unknown sharding type"):
        from lifelong.embeddings.plan import constraints_from_config
        constraints_from_config({"item": ["diagonal"]})


def test_model_override_drops_the_other_models_config(tmp_path):
    assert load_run_file(None, {"model": "din"}).model_config == {}  # default is sim_hard with k
    f = tmp_path / "r.yaml"
    f.write_text("model: sim_hard\nmodel_config: {k: 9}\n")
    assert load_run_file(f, {"model": "din"}).model_config == {}
    assert load_run_file(f, {"model": "sim_hard"}).model_config == {"k": 9}
    assert load_run_file(f).model_config == {"k": 9}


def test_model_configs_give_each_other_model_its_architecture(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model: sim_hard\nmodel_config: {k: 9}\n"
                 "model_configs: {eta: {k: 7, match: true}, din: {match: true}}\n")
    run = load_run_file(f)
    assert [config_for(run, m) for m in ("sim_hard", "eta", "din", "twin")] == [
        {"k": 9}, {"k": 7, "match": True}, {"match": True}, {}]
    eta = load_run_file(f, {"model": "eta"})  # train/tune --model eta
    assert eta.model_config == {"k": 7, "match": True} and "eta" not in eta.model_configs
    r = model_run(run, run, "eta", 2, {"model_config.k": 5})  # compare: tuned values win over the file's
    assert (r.model_config, r.name) == ({"k": 5, "match": True}, "main.L256.eta.s2")
    assert "eta" not in r.model_configs and r.model_configs["din"] == {"match": True}
    with pytest.raises(ValueError, match=r"model 'eta' config.*\['kk'\]"):
        run_file({"model_configs": {"eta": {"kk": 1}}})
    with pytest.raises(ValueError, match="unknown model 'etaa'"):
        run_file({"model_configs": {"etaa": {}}})
    with pytest.raises(ValueError, match=r"model_config \{'k': 9\} and model_configs.sim_hard \{'k': 8\} disagree"):
        run_file({"model_config": {"k": 9}, "model_configs": {"sim_hard": {"k": 8}}})


def test_run_files_are_safe_loaded_and_runs_are_named_per_model(tmp_path):
    import yaml

    f = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    f.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(yaml.constructor.ConstructorError):
        load_run_file(f)
    assert not marker.exists()
    # `--model X` without a name: the run is named X, so resuming by name never mixes models.
    assert load_run_file(None, {"model": "din"}).name == "din"
    assert load_run_file(None, {"model": "din", "name": "mine"}).name == "mine"
    g = tmp_path / "named.yaml"
    g.write_text("name: exp1\n")
    assert load_run_file(g, {"model": "twin"}).name == "exp1"


def test_sharding_constraint_the_device_cannot_honour_names_the_table():
    from lifelong.embeddings.plan import constraints_from_config

    with pytest.raises(ValueError, match=r"table 'item': none of \['table_row_wise'\].*cpu"):
        constraints_from_config({"item": ["table_row_wise"]}, "cpu")
    assert constraints_from_config({"item": ["row_wise", "table_row_wise"]}, "cpu")["item"].sharding_types


def test_embedding_init_flows_from_the_run_file_to_the_tables():
    from types import SimpleNamespace

    from lifelong.jobs.train import job_spec

    meta = SimpleNamespace(n_items=50, n_categories=5, n_users=7)
    run = run_file({"model": "din", "embedding_init": 0.3})
    tables = job_spec(run, meta).features.tables()
    assert {(t.weight_init_min, t.weight_init_max) for t in tables} == {(-0.3, 0.3)}
    assert {t.weight_init_max for t in job_spec(run_file({"model": "din"}), meta).features.tables()} == {None}
    with pytest.raises(ValueError, match="init bound must be >= 0"):
        job_spec(run_file({"model": "din", "embedding_init": -1}), meta)


def test_cli_errors_are_one_line_naming_the_file_and_key_before_ray_starts(tmp_path, capsys):
    import ray

    from lifelong.jobs.cli import main

    ray.shutdown()  # the Ray tests' shared Ray, if it runs: this test asserts that none is started
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: twin\nmodel_config: {k: 10, heads_typo: 4}\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "heads_typo" in err[0], err
    assert not ray.is_initialized()  # validated before Ray started or samples were built
    with pytest.raises(ValueError, match="heads_typo"):
        main(["--debug", "train", "--config", str(bad)])
