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
