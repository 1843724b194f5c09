"""Stage keys of ``hetdiff run`` survive new settings: a run folder written by an earlier
hetdiff (before ``gradient_checkpointing``, the router's ``arch`` and ``size``) resumes instead of
retraining, because settings added at their defaults leave every key as it was."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hetdiff.config import load_config
from hetdiff.errors import HetdiffError
from hetdiff.pipeline.run import STAGES, Run

# Computed by the hetdiff of commit c0549bf, before the settings above existed.
DEFAULT_KEYS = {"cluster": "eaa59f0bbb9258ea", "experts": "01f39d41563943dc",
                "router": "97e55b5254a3964b", "sample": "d3f05e8520e44295",
                "evaluate": "d0dc98b0edf5b09d", "report": "816ad22487502f4f"}  # fmt: skip
QUICK_KEYS = {"cluster": "ae02b9fe59aaab84", "experts": "e1551413170eaee7",
              "router": "ee582bcf550d5c18", "sample": "caacbc9b10f64c65",
              "evaluate": "4ae4746fc7e3f972", "report": "9563caa821229fc8"}  # fmt: skip


# The default config of c0549bf, written out: the defaults changed since (issue 18: v-prediction
# DDPM experts of 1000 steps, guidance 3, no Inception FID at n = 128), and a run folder of the
# old defaults must still resume with its keys.
OLD_DEFAULT = {
    "experts": [
        {"objective": "ddpm", "prediction": "eps", "schedule": "linear", "steps": 600},
        {"objective": "flow", "steps": 600},
        {"objective": "ddpm", "prediction": "v", "schedule": "cosine", "steps": 600},
        {"objective": "flow", "steps": 600},
    ],
    "sample": {"cfg": 1.0},
    "evaluate": {"fid": True},
}


def _config(preset):
    return load_config(None, preset=preset, overrides=None if preset else OLD_DEFAULT)


@pytest.mark.parametrize("preset,keys", [(None, DEFAULT_KEYS), ("quick", QUICK_KEYS)])
def test_stage_keys_of_earlier_runs_are_kept(tmp_path, preset, keys):
    run = Run(_config(preset), tmp_path / "run")
    assert {stage: run.stage_key(stage) for stage in STAGES} == keys


def test_a_changed_new_setting_changes_its_stages_only(tmp_path):
    overrides = {**OLD_DEFAULT, "router": {"arch": "transformer"}}
    run = Run(load_config(None, overrides=overrides), tmp_path / "a")
    changed = {s for s in STAGES if run.stage_key(s) != DEFAULT_KEYS[s]}
    assert changed == {"router", "sample", "evaluate", "report"}


def test_an_earlier_runs_config_passes_the_folder_check(tmp_path):
    config = load_config(None)
    old = config.to_dict()
    for expert in old["experts"]:
        del expert["gradient_checkpointing"]
    del old["router"]["arch"], old["router"]["size"]
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(old))
    Run(config, out).check_folder()  # no error: the same run
    other = load_config(None, overrides={"seed": 1})
    with pytest.raises(HetdiffError, match="config differs in seed"):
        Run(other, out).check_folder()


@pytest.mark.parametrize(
    "section,name,value,stages",
    [
        ("experts", "min_snr_gamma", 5.0, {"experts", "sample", "evaluate", "report"}),
        ("sample", "top_p", 0.5, {"sample", "evaluate", "report"}),
    ],
)
def test_min_snr_gamma_and_top_p_key_their_stages_only(tmp_path, section, name, value, stages):
    """Both are dropped from the keys at their defaults (the pinned keys above), and change the
    stages that read them when set (min_snr_gamma on the first expert, a DDPM one)."""
    config = _config(None).to_dict()
    entry = config[section][0] if section == "experts" else config[section]
    entry[name] = value
    overrides = {**OLD_DEFAULT, section: config[section]}
    run = Run(load_config(None, overrides=overrides), tmp_path / "run")
    assert {s for s in STAGES if run.stage_key(s) != DEFAULT_KEYS[s]} == stages


@pytest.mark.parametrize("preset,keys", [(None, DEFAULT_KEYS), ("quick", QUICK_KEYS)])
def test_compile_is_a_speed_setting_outside_every_key(tmp_path, preset, keys):
    """``experts[*].compile`` (a config file's ``compile: true``) changes no stage key, and a
    folder written with it off passes the folder check with it on (and back)."""
    experts = [{**e, "compile": True} for e in _config(preset).to_dict()["experts"]]
    if preset:  # a preset replaces a file's experts: set them after it
        on = load_config(None, preset=preset, overrides={"experts": experts})
    else:
        path = tmp_path / "run.json"
        path.write_text(json.dumps({**OLD_DEFAULT, "experts": experts}))
        on = load_config(path)
    assert [e.compile for e in on.experts] == [True] * len(experts)
    run = Run(on, tmp_path / "run")
    assert {stage: run.stage_key(stage) for stage in STAGES} == keys
    off = _config(preset)
    for first, second in [(off, on), (on, off)]:
        out = tmp_path / f"folder-{first.experts[0].compile}"
        out.mkdir()
        (out / "config.json").write_text(json.dumps(first.to_dict()))
        Run(second, out).check_folder()  # no error: the same run


@pytest.mark.parametrize("preset,keys", [(None, DEFAULT_KEYS), ("quick", QUICK_KEYS)])
def test_sample_compile_is_a_speed_setting_outside_every_key(tmp_path, preset, keys):
    """``sample.compile`` (``compile = true`` in a config's ``[sample]``) changes no stage key,
    and a folder sampled with it off passes the folder check with it on (and back): a rerun with
    it toggled reuses the samples."""
    off = _config(preset)
    sample = {**json.loads(json.dumps(off.to_dict()["sample"])), "compile": True}
    on = load_config(None, preset=preset,
                     overrides={**({} if preset else OLD_DEFAULT), "sample": sample})  # fmt: skip
    assert (off.sample.compile, on.sample.compile) == (False, True)
    assert on.sample == dataclasses.replace(off.sample, compile=True)
    run = Run(on, tmp_path / "run")
    assert {stage: run.stage_key(stage) for stage in STAGES} == keys
    for first, second in [(off, on), (on, off)]:
        out = tmp_path / f"folder-{first.sample.compile}"
        out.mkdir()
        (out / "config.json").write_text(json.dumps(first.to_dict()))
        Run(second, out).check_folder()  # no error: the same run
