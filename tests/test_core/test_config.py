import pytest

from nasframe.config import config_from_dict, load_config, parse_duration
from nasframe.errors import ConfigError
from nasframe.experiment import Experiment


def _errors(data, plugins=None):
    with pytest.raises(ConfigError) as err:
        cfg = config_from_dict(data, "exp.yaml")
        if plugins is not None:
            Experiment.from_config(cfg, plugins, "exp.yaml")
    return err.value.problems


def test_every_schema_error_has_path_value_and_fix(toy_config):
    toy_config["budget"] = {"trails": 5}
    toy_config["objectives"][0]["direction"] = "down"
    toy_config["constraints"] = ["toy_cost << 3"]
    problems = _errors(toy_config)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "budget.trails: unknown field; did you mean 'trials'?" in joined
    assert "objectives[0].direction" in joined and "'down'" in joined
    assert "constraints[0]" in joined and "NAME <= NUMBER" in joined
    assert all(p.startswith("exp.yaml: ") for p in problems)


def test_missing_required_fields():
    problems = _errors({"search_space": {"name": "toy"}})
    assert any("objectives: Field required; add it" in p for p in problems)
    assert any(p.startswith("exp.yaml: budget") for p in problems)


def test_unknown_names_list_what_is_available(toy_config, plugins):
    toy_config["strategy"] = {"name": "randon"}
    toy_config["objectives"][1] = {"name": "toy_qualty"}
    toy_config["search_space"]["params"] = {"widthz": [2]}
    toy_config["constraints"] = ["gmax <= 3"]
    problems = _errors(toy_config, plugins)
    joined = "\n".join(problems)
    assert "strategy.name: unknown strategy 'randon'; did you mean 'random'?" in joined
    assert "available: ens, eps_bo, grid, nni, optuna, random" in joined
    assert "objectives[1].name: unknown objective 'toy_qualty'; did you mean 'toy_quality'?" in joined
    assert "search_space.params.widthz: unknown field; did you mean 'widths'? (got [2]); allowed " \
           "here: widths, max_depth" in joined
    assert "constraints[0]: 'gmax'" in joined
    assert len(problems) == 4


def test_executor_name_and_params_are_checked(toy_config, plugins):
    toy_config["executor"] = {"name": "proces", "workers": 2}
    joined = "\n".join(_errors(toy_config, plugins))
    assert "executor.name: unknown executor 'proces'; did you mean 'process'?" in joined
    assert "available: dask, inline, process" in joined
    toy_config["executor"] = {"name": "dask", "params": {"adress": "tcp://x:8786"}}
    joined = "\n".join(_errors(toy_config, plugins))
    assert "executor.params.adress: unknown field; did you mean 'address'?" in joined
    toy_config["executor"] = {"name": "inline", "workers": 0}
    assert any("executor.workers" in p for p in _errors(toy_config))


def test_a_missing_optional_executor_says_how_to_install_it(plugins, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    with pytest.raises(ConfigError, match=r"executor: executor 'dask' needs distributed, which is "
                                          r"not installed; install with: pip install 'nasframe\[dask\]'"):
        plugins.executors.create("dask", {"workers": 2}, "executor")


def test_duplicate_objective_keys_need_an_id(toy_config):
    toy_config["objectives"].append({"name": "toy_cost"})
    assert any("appears twice" in p for p in _errors(toy_config))
    toy_config["objectives"][-1]["id"] = "cost2"
    assert config_from_dict(toy_config).objectives[-1].key == "cost2"


def test_durations():
    assert parse_duration("10m") == 600 and parse_duration(90) == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("search_space: {name: toy\nobjectives: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_config(p)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("search_space: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
