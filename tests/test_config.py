import pytest

from hetdiff.config import RunConfig, load_config
from hetdiff.errors import HetdiffError


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_overrides_from_toml_and_yaml(tmp_path):
    assert load_config() == RunConfig()
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
    assert cfg.experts[1].schedule == "cosine"


@pytest.mark.parametrize(
    "text, message",
    [
        ("resolutoin = 8\n", "unknown config key 'resolutoin'; did you mean 'resolution'?"),
        ("[sample]\nstpes = 3\n", "unknown config key 'sample.stpes'; did you mean 'steps'?"),
        ("[router]\nsteps = -5\n", "router.steps must be >= 1, got -5"),
        ("[[experts]]\nsteps = -1\n", "cluster.k = 4 but 1 experts are listed"),
        (
            "[cluster]\nk = 1\n[[experts]]\nsteps = -1\n",
            "experts[0].steps must be a positive step count, got -1",
        ),
        (
            "[cluster]\nk = 1\n[[experts]]\nobjective = 'ddpm'\nprediction = 'velocity'\n",
            "experts[0].prediction 'velocity' is not a DDPM prediction",
        ),
        ("resolution = [\n", "does not parse"),
        ("text_encodr = 'hash'\n", "did you mean 'text_encoder'?"),
        ("text_encoder = 'clip'\n", "text_encoder 'clip' is neither 'hash', 'minilm' nor a folder"),
        ("[sample]\nprompts = ['a cat']\n", "sample.prompts needs a text-conditioned run"),
        ("text_encoder = 'hash'\n[sample]\nprompts = []\n", "non-empty list of non-empty"),
        ("text_encoder = 'hash'\n[sample]\nprompts = ['a', ' ']\n", "non-empty list of non-"),
        ("text_encoder = 'hash'\n[sample]\nprompts = 'a cat'\n", "must be a list of prompt"),
        ("text_encoder = 'hash'\n[sample]\nper_prompt = 0\n", "sample.per_prompt must be >= 1"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(HetdiffError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(HetdiffError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_text_config(tmp_path):
    assert RunConfig().text_encoder is None and RunConfig().sample.prompts is None
    cfg = load_config(
        write(tmp_path, "text_encoder = 'hash'\n[sample]\nprompts = ['a cat', 'a dog']\n")
    )
    assert cfg.text_encoder == "hash" and cfg.sample.prompts == ("a cat", "a dog")
    folder = tmp_path / "encoder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert load_config(overrides={"text_encoder": str(folder)}).text_encoder == str(folder)
