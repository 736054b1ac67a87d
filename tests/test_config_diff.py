import json

import pytest

from lrm.config_diff import differences


def test_differences_name_changed_leaves_only():
    saved = {"fit": {"lr": 0.001, "steps": 2000, "betas": [0.9, 0.99]}, "label": "niqe", "codec": {"name": "dct"}}
    now = {"fit": {"lr": 0.01, "steps": 2000, "betas": [0.9, 0.999], "augment": "hflip"}, "label": "niqe",
           "codec": "dct"}
    assert differences(saved, now) == [
        "fit.lr: saved 0.001, now 0.01",
        "fit.betas: saved [0.9, 0.99], now [0.9, 0.999]",
        "fit.augment: saved None, now 'hflip'",
        "codec: saved {'name': 'dct'}, now 'dct'",
    ]
    assert differences(saved, saved) == [] and differences(1, 2) == ["value: saved 1, now 2"]


def test_a_folder_holding_another_commands_run_is_named_not_diffed(tmp_path):
    from lrm.config_diff import refuse_other_run
    from lrm.tuning.tune_run import check_settings

    refuse_other_run(tmp_path, {"tune": {"steps": 3}}, "tune")  # its own kind: the settings are compared after
    refuse_other_run(tmp_path, {"something": 1}, "tune")  # unknown: left to the settings check
    with pytest.raises(ValueError, match=r"holds a surrogate run of `lrm fit`, not a tuning run of `lrm tune`; "
                                         r"pass a new --out"):
        refuse_other_run(tmp_path, {"fit": {"steps": 3}, "label": "x"}, "tune")
    (tmp_path / "config.json").write_text(json.dumps({"job": {"losses": ["vsd"]}, "teacher_run": "t"}))
    with pytest.raises(ValueError, match=r"holds a student run of `lrm distill`, not a tuning run"):
        check_settings(tmp_path, {"tune": {"steps": 3}}, {"steps": 200})
