"""RunSettings: one frozen record of a run's settings, from the flags or from a recorded run,
checked in one place, written back to run.json in the format earlier runs hold."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlsys.errors import DataError
from dlsys.frontend.run_folder import SETTINGS_FILE, record_settings, recorded_settings
from dlsys.frontend.settings import GPT_SETTING_NAMES, SETTING_NAMES, RunSettings
from dlsys.frontend.trainer import TrainConfig, resolve

# run.json as the trainer wrote it before RunSettings (a dict, json.dumps(indent=1,
# sort_keys=True)): such folders must still resume, and be rewritten byte for byte.
EARLIER_RUN_JSON = """{
 "batch_size": 1000,
 "data": "/data/fashion-mnist",
 "epochs": 10,
 "hidden": [
  256,
  100
 ],
 "lr": 0.2,
 "lr_schedule": "constant",
 "model": "mlp",
 "optimizer": "sgd",
 "seed": 0,
 "val_size": 10000,
 "warmup": 0,
 "weight_decay": 0.0
}"""


def test_an_earlier_run_json_loads_and_is_rewritten_unchanged(tmp_path):
    (tmp_path / SETTINGS_FILE).write_text(EARLIER_RUN_JSON)
    settings = recorded_settings(tmp_path)
    assert settings == RunSettings(model="mlp", hidden=(256, 100), batch_size=1000, epochs=10,
                                   val_size=10000, seed=0, warmup=0, weight_decay=0.0,
                                   optimizer="sgd", lr_schedule="constant",
                                   data="/data/fashion-mnist", lr=0.2)
    record_settings(tmp_path, settings)
    assert (tmp_path / SETTINGS_FILE).read_text() == EARLIER_RUN_JSON


def test_the_setting_names_are_the_fields_and_the_record_keys():
    assert SETTING_NAMES == tuple(f.name for f in dataclasses.fields(RunSettings))
    record = RunSettings.from_args(TrainConfig(Path("unused"))).to_record()
    # An image model's record has every setting but the GPT's (as before the GPT); the
    # GPT's has them all, its vocabulary once the corpus is read.
    assert sorted(record) == sorted(set(SETTING_NAMES) - set(GPT_SETTING_NAMES))
    gpt = RunSettings.from_args(TrainConfig(Path("unused"), model="gpt", vocab="ab"))
    assert sorted(gpt.to_record()) == sorted(SETTING_NAMES)
    assert json.loads(json.dumps(record)) == record  # JSON as it is (hidden as a list)
    with pytest.raises(TypeError, match="unknown settings colour"):
        TrainConfig(Path("unused"), colour="red")


def test_settings_are_frozen_and_checked_when_made_or_replaced():
    settings = RunSettings.from_args(TrainConfig(Path("unused"), model="logreg"))
    assert settings.hidden is None and settings.lr == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 0.1
    with pytest.raises(DataError, match=r"^run settings: setting lr must be at most"):
        dataclasses.replace(settings, lr=1e39)
    with pytest.raises(DataError, match="setting epochs must be an integer in 1..100000"):
        RunSettings.from_args(TrainConfig(Path("unused"), epochs=0))


def test_a_record_must_be_whole_and_its_problem_names_where_it_came_from():
    record = RunSettings.from_args(TrainConfig(Path("unused"))).to_record()
    del record["warmup"]
    with pytest.raises(DataError, match=r"^run.json: missing settings warmup$"):
        RunSettings.from_record(record, "run.json")
    with pytest.raises(DataError, match=r"^x: setting batch_size must be a positive integer"):
        RunSettings.from_record({**record, "warmup": 0, "batch_size": 0}, "x")


def test_resuming_announces_a_new_rate_and_keeps_the_rest():
    recorded = RunSettings.from_args(TrainConfig(Path("unused"), epochs=3))
    lines = []
    settings = resolve(TrainConfig(Path("unused"), lr=0.05, epochs=5, seed=0), recorded,
                       lines.append)
    assert settings == dataclasses.replace(recorded, lr=0.05, epochs=5)
    assert lines == ["epochs: 3 -> 5 (was recorded as 3)", "lr: 0.2 -> 0.05 (was recorded as 0.2)"]
    assert [settings.lr_at(epoch) for epoch in (1, 5)] == [0.05, 0.05]


def test_the_settings_module_loads_without_tvm():
    code = "import sys, dlsys.frontend.settings; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
