"""charlm.training.run_config: a run's overrides and config across resumes, and the comparison that
decides what a ``resume=`` may change."""

from __future__ import annotations


def test_runs_from_before_the_regularisers_resume_without_a_change():
    from charlm.training.run_config import config_changes

    data = {"batch_size": 8}
    old = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1}}
    new = {"data": data, "model": {"hidden_size": 64, "dropout": 0.1, "weight_drop": 0.0, "hidden_dropout": 0.0}}
    assert config_changes(old, new) == ([], [])
    changed, _ = config_changes(old, {"data": data, "model": {**new["model"], "weight_drop": 0.5}})
    assert changed == ["model.weight_drop: '<unset>' -> 0.5"]


def test_runs_from_before_shuffle_lines_resume_in_their_line_order_and_a_new_order_is_refused():
    from charlm.training.run_config import config_changes

    old = {"data": {"batch_size": 8, "splits": [0.9, 0.05, 0.05]}}
    same = {"data": {**old["data"], "shuffle_lines": None}}
    assert config_changes(old, same) == ([], [])
    changed, _ = config_changes(old, {"data": {**old["data"], "shuffle_lines": 0}})
    assert changed == ["data.shuffle_lines: '<unset>' -> 0"]  # other splits: not the run that was trained
    changed, _ = config_changes({"data": {**old["data"], "shuffle_lines": 0}}, {"data": {**old["data"], "shuffle_lines": 5}})
    assert changed == ["data.shuffle_lines: 0 -> 5"]


def test_resume_counts_the_global_streams_as_lightning_counts_devices():
    from charlm.training.run_config import config_changes

    cpu = lambda devices, batch: {"data": {"batch_size": batch}, "trainer": {"accelerator": "cpu", "devices": devices}}  # noqa: E731
    # "2" is two CPU processes for Lightning (main counted any string as one device)
    assert config_changes(cpu("2", 4), cpu(1, 8)) == ([], [])
    changed, _ = config_changes(cpu("2", 4), cpu(1, 4))
    assert changed == [
        "global streams (data.batch_size x devices x nodes): 8 -> 4 (to resume on another number of devices "
        "keep the product: e.g. 2 devices x 4 -> 1 device x 8)"
    ]
    # the old run's processes as its checkpoint records them (its config may name devices not here)
    gpus = {"data": {"batch_size": 4}, "trainer": {"accelerator": "gpu", "devices": 2}}
    assert config_changes(gpus, cpu(1, 8), old_world_size=2) == ([], [])
    assert config_changes(gpus, cpu(1, 4), old_world_size=2)[0][0].startswith("global streams (data.batch_size x devices x nodes): 8 -> 4")
