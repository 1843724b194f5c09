"""The run config: defaults (each once, in hetdiff.config), the --quick preset, file formats, and
every refusal as one line that names the key, before anything runs."""

from __future__ import annotations

import dataclasses

import pytest

from hetdiff.config import (
    QUICK,
    SOLVERS,
    STRATEGIES,
    EvalSettings,
    ExpertSettings,
    RouterSettings,
    RunConfig,
    SampleSettings,
    load_config,
    validate_run,
)
from hetdiff.errors import HetdiffError


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- defaults


def test_defaults():
    config = load_config()
    assert config == RunConfig()
    assert (config.data, config.resolution, config.seed, config.workers) == (
        "mnist5k+animal-mnist", 16, 0, 2,
    )  # fmt: skip
    assert config.cluster.k == len(config.experts) == 4
    assert [(e.objective, e.prediction, e.schedule, e.steps, e.lr) for e in config.experts] == [
        ("ddpm", "v", "linear", 1000, 2e-3),
        ("flow", "velocity", None, 1000, 2e-3),
        ("ddpm", "v", "cosine", 1000, 2e-3),
        ("flow", "velocity", None, 1000, 2e-3),
    ]
    assert (config.sample.cfg, config.evaluate.fid, config.evaluate.judge) == (3.0, False, True)
    router = config.router
    assert (router.steps, router.batch_size, router.lr, router.hidden) == (600, 128, 2e-3, 32)
    assert (router.resolved_warmup_steps, router.resolved_checkpoint_every) == (50, 300)
    assert RouterSettings(steps=20).resolved_warmup_steps == 20  # warm-up capped at the steps
    assert RouterSettings(steps=1).resolved_checkpoint_every == 1
    assert config.sample == SampleSettings() and config.sample.solver == "heun"
    # every strategy but nucleus (added later; the default run samples what it always did)
    assert set(config.sample.strategies) == set(STRATEGIES) - {"nucleus"} and "heun" in SOLVERS
    assert config.sample.top_p == 0.9
    assert (config.evaluate.n, config.evaluate.reference_n) == (128, 500) == (
        EvalSettings().n, EvalSettings().reference_n,
    )  # fmt: skip
    assert config.text_encoder is None and config.sample.prompts is None


def test_expert_settings_resolve_prediction_and_schedule():
    assert (ExpertSettings().prediction, ExpertSettings().schedule) == ("velocity", None)
    ddpm = ExpertSettings(objective="ddpm")
    assert (ddpm.prediction, ddpm.schedule) == ("eps", "linear")
    assert ddpm.to_dict()["prediction"] == "eps"  # the dict shows what will train
    assert ExpertSettings.from_dict(ddpm.to_dict()) == ddpm
    with pytest.raises(HetdiffError, match="schedule is for ddpm experts"):
        ExpertSettings(schedule="cosine")


def test_overrides_from_toml_yaml_and_json(tmp_path):
    cfg = load_config(write(tmp_path, "resolution = 8\n[cluster]\nfeatures = 'pixels'\n"))
    assert cfg.resolution == 8 and cfg.cluster.features == "pixels" and cfg.cluster.k == 4
    cfg = load_config(
        write(
            tmp_path,
            "cluster: {k: 2}\nexperts:\n  - {objective: flow}\n  - {objective: ddpm, "
            "prediction: x0, schedule: cosine}\n",
            "run.yaml",
        )  # fmt: skip
    )
    assert [e.objective for e in cfg.experts] == ["flow", "ddpm"]
    assert cfg.experts[1].schedule == "cosine" and cfg.experts[1].prediction == "x0"
    cfg = load_config(write(tmp_path, '{"sample": {"strategies": ["full"]}}', "run.json"))
    assert cfg.sample.strategies == ("full",)
    assert load_config(overrides={"seed": 3}).seed == 3


# ----------------------------------------------------------------------------- --quick


def test_quick_preset_is_config_quick():
    quick = load_config(preset="quick")
    assert quick.cluster.k == QUICK["cluster"]["k"] == len(quick.experts) == 2
    assert quick.cluster.features == "pixels" and quick.cluster.fine == 16
    assert [(e.objective, e.steps) for e in quick.experts] == [("ddpm", 60), ("flow", 60)]
    assert quick.router.steps == 60 and quick.sample.strategies == ("top1", "full")
    assert (quick.sample.n, quick.sample.steps) == (16, 8)
    assert (quick.evaluate.n, quick.evaluate.fid) == (16, False)
    assert quick.data == RunConfig().data  # the keys QUICK does not name keep their defaults


def test_quick_replaces_the_files_top_level_keys_it_names(tmp_path):
    path = write(
        tmp_path,
        'data = "digits"\ntext_encoder = "hash"\nworkers = 1\n'
        "[cluster]\nk = 4\nbalanced = false\n[router]\nlr = 0.01\n",
    )
    quick = load_config(path, preset="quick")
    # keys QUICK does not name come from the file
    assert (quick.data, quick.text_encoder, quick.workers) == ("digits", "hash", 1)
    # a key QUICK names is replaced whole: the file's cluster and router tables are gone
    assert quick.cluster == dataclasses.replace(
        RunConfig().cluster, k=2, fine=16, features="pixels"
    )
    assert quick.cluster.balanced is True and quick.router == RouterSettings(steps=60)
    assert quick == load_config(path, overrides=QUICK)  # the old `--quick` semantics
    with pytest.raises(HetdiffError, match="unknown preset 'fast'; use one of quick"):
        load_config(path, preset="fast")


# ----------------------------------------------------------------------------- refusals


BAD = [
    # names a user may ask for: strategies, solvers, schedules, predictions, models
    ("[sample]\nstrategies = ['top-1', 'ful']\n",
     "unknown strategy 'top-1' in sample.strategies; did you mean 'top1'?"),
    ("[sample]\nstrategies = ['full', 'ful']\n",
     "unknown strategy 'ful' in sample.strategies; did you mean 'full'?"),
    ("[sample]\nstrategies = 'top1'\n", "sample.strategies must be a list, got 'top1'"),
    ("[sample]\nstrategies = []\n", "sample.strategies must list at least one strategy"),
    ("[sample]\nsolver = 'rk4'\n", "sample.solver 'rk4' is unknown; use one of euler, heun"),
    ("[cluster]\nk = 2\n[[experts]]\nprediction = 'v'\n[[experts]]\n",
     "experts[0].prediction 'v' does not fit objective 'flow'; use one of velocity"),
    ("[cluster]\nk = 2\n[[experts]]\nobjective = 'ddpm'\nprediction = 'velocity'\n[[experts]]\n",
     "experts[0].prediction 'velocity' does not fit objective 'ddpm'"),
    ("[cluster]\nk = 2\n[[experts]]\n[[experts]]\nobjective = 'ddpm'\nschedule = 'cosin'\n",
     "experts[1].schedule 'cosin' is unknown; use one of linear, cosine, scaled_linear"),
    ("[cluster]\nk = 2\n[[experts]]\nobjective = 'dpm'\n[[experts]]\n",
     "experts[0].objective 'dpm' is unknown; use one of flow, ddpm"),
    ("[cluster]\nk = 2\n[[experts]]\nmodel = 'tinny'\n[[experts]]\n",
     "experts[0].model 'tinny' is unknown; did you mean 'tiny'?"),
    ("[cluster]\nk = 2\n[[experts]]\ntime_sampling = 'normal'\n[[experts]]\n",
     "experts[0].time_sampling 'normal' is unknown; use one of uniform, logit_normal"),
    ("[cluster]\nk = 2\n[[experts]]\nmixed_precision = 'fp8'\n[[experts]]\n",
     "experts[0].mixed_precision 'fp8' is unknown; use one of no, bf16, fp16, auto"),
    # types and ranges
    ("[sample]\nsteps = 'abc'\n", "sample.steps must be an integer, got 'abc'"),
    ("[router]\nlr = 'fast'\n", "router.lr must be a number, got 'fast'"),
    ("[cluster]\nk = 2\n[[experts]]\nlr = 'fast'\n[[experts]]\n",
     "experts[0].lr must be a number, got 'fast'"),
    ("[cluster]\nk = 1\n", "cluster.k must be >= 2, got 1"),
    ("[cluster]\nk = '1'\n", "cluster.k must be an integer, got '1'"),
    ("[router]\nsteps = -5\n", "router.steps must be >= 1, got -5"),
    ("[cluster]\nk = 2\n[[experts]]\nsteps = -1\n[[experts]]\n",
     "experts[0].steps must be >= 1, got -1"),
    ("resolution = 2\n", "resolution must be >= 4, got 2"),
    ("[sample]\ncfg = 'strong'\n", "sample.cfg must be a number, got 'strong'"),
    ("[evaluate]\nfid = 'yes'\n", "evaluate.fid must be true or false, got 'yes'"),
    ("cluster = 3\n", "cluster must be a table/mapping, got 3"),
    ("experts = []\n", "config key 'experts' must be a non-empty list of tables"),
    # the run as a whole
    ("[[experts]]\nsteps = 5\n", "cluster.k = 4 but 1 experts are listed"),
    ("[cluster]\nk = 3\n", "cluster.k = 3 but 4 experts are listed"),
    ("resolution = 15\n",
     "resolution 15 is not divisible by experts[0].model 'tiny''s patch size 2"),
    ("[sample]\nprompts = ['a cat']\n", "sample.prompts needs a text-conditioned run"),
    ("text_encoder = 'clip'\n", "text_encoder 'clip' is neither 'hash', 'minilm' nor a folder"),
    ("text_encoder = 'hash'\n[sample]\nprompts = []\n", "non-empty list of non-empty"),
    ("text_encoder = 'hash'\n[sample]\nprompts = ['a', ' ']\n", "non-empty list of non-"),
    ("text_encoder = 'hash'\n[sample]\nprompts = 'a cat'\n",
     "sample.prompts must be a list or null, got 'a cat'"),
    ("text_encoder = 'hash'\n[sample]\nper_prompt = 0\n", "sample.per_prompt must be >= 1"),
    # unknown keys, with the nearest valid one
    ("resolutoin = 8\n", "unknown config key 'resolutoin'; did you mean 'resolution'?"),
    ("[sample]\nstpes = 3\n", "unknown config key 'sample.stpes'; did you mean 'steps'?"),
    ("text_encodr = 'hash'\n", "unknown config key 'text_encodr'; did you mean 'text_encoder'?"),
    ("[cluster]\nk = 2\n[[experts]]\nobjectiv = 'flow'\n[[experts]]\n",
     "unknown config key 'experts[0].objectiv'; did you mean 'objective'?"),
    # files that do not parse
    ("resolution = [\n", "does not parse"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(HetdiffError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("sample: {strategies: [top-1, ful]}\n", "did you mean 'top1'?"),
        ("sample: {steps: [1\n", "does not parse"),
        ("- 1\n- 2\n", "must hold a table/mapping at the top level"),
    ],
)
def test_bad_yaml_is_one_line_errors(tmp_path, text, message):
    with pytest.raises(HetdiffError) as info:
        load_config(write(tmp_path, text, "run.yaml"))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_yaml_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    text = f"resolution: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(HetdiffError) as info:
        load_config(write(tmp_path, text, "run.yaml"))
    message = str(info.value)
    assert "does not parse" in message and "python/object/apply" in message
    assert "\n" not in message and not marker.exists()


def test_missing_and_unsupported_config_files(tmp_path):
    with pytest.raises(HetdiffError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(HetdiffError, match="use a .toml, .yaml or .json file"):
        load_config(write(tmp_path, "resolution = 8\n", "run.ini"))


def test_validate_run_checks_configs_built_in_python():
    config = RunConfig()
    assert validate_run(config) is config
    with pytest.raises(HetdiffError, match="cluster.k = 4 but 3 experts are listed"):
        validate_run(dataclasses.replace(config, experts=config.experts[:3]))
    with pytest.raises(
        HetdiffError, match="unknown strategy 'ful' in sample.strategies; did you mean 'full'"
    ):
        SampleSettings(strategies=("ful",))
    with pytest.raises(HetdiffError, match="SampleSettings.solver 'rk4' is unknown"):
        SampleSettings(solver="rk4")


def test_text_config(tmp_path):
    cfg = load_config(
        write(tmp_path, "text_encoder = 'hash'\n[sample]\nprompts = ['a cat', 'a dog']\n")
    )
    assert cfg.text_encoder == "hash" and cfg.sample.prompts == ("a cat", "a dog")
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert load_config(overrides={"text_encoder": str(folder)}).text_encoder == str(folder)


def test_resources_are_one_table_per_expert_or_none(tmp_path):
    from hetdiff.config import ResourceSettings

    path = tmp_path / "r.toml"
    path.write_text('[[resources]]\ncpus = 4\npartition = "gpu"\nray_resources = ["island-a"]\n')
    with pytest.raises(HetdiffError, match="1 resources tables for 4 experts"):
        load_config(path)
    path.write_text(path.read_text() * 4)
    config = load_config(path)
    assert config.resources_of(3) == ResourceSettings(
        cpus=4, partition="gpu", ray_resources=("island-a",)
    )
    assert load_config().resources_of(0) == ResourceSettings()  # the defaults once
    path.write_text("[[resources]]\ncpus = 0\n" * 4)
    with pytest.raises(HetdiffError, match="resources\\[0\\].cpus must be >= 1"):
        load_config(path)
