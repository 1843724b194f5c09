"""Bad input, table-driven: each row exits with status 2 and one stderr line starting
``hetdiff: error:``, prints no traceback, and adds no file to the folder the output goes to.

Rows that only parse and validate run in-process (``hetdiff.cli.main``); rows that need a
file-size limit (``ulimit -f``) or a full disk run the command in a child process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from expert_files import write_ddpm_expert
from hetdiff.cli import main
from hetdiff.experts import signed
from hetdiff.experts.store import SPEC_KEY
from hetdiff.models.dit import DiT, DiTConfig

SAMPLE = ["sample", "--n", "2", "--steps", "2"]
EXPERT = ["train-expert", "--data", "digits", "--resolution", "8", "--steps", "2",
          "--batch-size", "16", "--mixed-precision", "no", "--no-progress"]  # fmt: skip
CLUSTER = ["cluster", "--data", "digits", "--k", "2", "--features", "pixels", "--fine", "4",
           "--quiet"]  # fmt: skip
SMALL = DiTConfig(input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2)


def _crafted(work: Path, **change) -> str:
    """A signed expert whose spec carries ``change``: the digest matches, the spec is bad."""
    model = {"arch": "dit", "name": "t", **SMALL.to_dict(), **change.pop("model", {})}
    spec = dict(objective="ddpm", prediction="eps", schedule={"name": "linear"}, model=model,
                resolution=8, channels=1, steps=1, time_scale=1000.0)  # fmt: skip
    spec.update(change)
    path = work.parent / f"crafted-{len(list(work.parent.glob('crafted-*')))}.safetensors"
    signed.write_signed(path, DiT(SMALL).state_dict(), {"format": "pt", SPEC_KEY: json.dumps(spec)})
    return str(path)


def _config(work: Path, text: str, suffix: str) -> str:
    path = work.parent / f"config-{abs(hash(text))}{suffix}"
    path.write_text(text)
    return str(path)


def _existing_file(work: Path) -> str:
    (work / "taken").write_text("mine")
    return str(work / "taken")


def _fifo(work: Path) -> str:
    os.mkfifo(work / "pipe")
    return str(work / "pipe")


def _device(work: Path) -> str:
    try:
        os.mknod(work / "null", 0o666 | 0o020000, os.makedev(1, 3))  # like /dev/null
    except OSError:
        pytest.skip("cannot create a device node here")
    return str(work / "null")


def _unsigned(work: Path) -> str:
    import safetensors.torch

    path = work.parent / "unsigned.safetensors"
    state = {k: v.contiguous() for k, v in DiT(SMALL).state_dict().items()}
    spec = json.loads(_read_spec_json(_crafted(work)))
    safetensors.torch.save_file(state, str(path), {"format": "pt", SPEC_KEY: json.dumps(spec)})
    return str(path)


def _read_spec_json(path: str) -> str:
    import safetensors

    with safetensors.safe_open(path, framework="pt") as handle:
        return handle.metadata()[SPEC_KEY]


def _time_scale_flipped(work: Path) -> str:
    path = Path(_crafted(work))
    data = path.read_bytes()
    path.write_bytes(data.replace(b'\\"time_scale\\": 1000', b'\\"time_scale\\": 1100', 1))
    assert path.read_bytes() != data
    return str(path)


def _init_mismatch(work: Path) -> str:
    return _crafted(work, model={"depth": 2}, objective="flow", prediction="velocity",
                    schedule=None)  # fmt: skip


UNWRITABLE = "/proc/hetdiff-no-such-folder/out"  # a folder nobody can create files in

# (id, argv builder: work folder -> argv, text the error must contain)
ROWS = [
    ("run-steps-abc", lambda w: ["run", _config(w, '[[experts]]\nsteps = "abc"\n', ".toml"),
                                 "--out", str(w / "r")], "must be an integer"),
    ("run-yaml-unparsable", lambda w: ["run", _config(w, "a: [1\n", ".yaml"), "--out",
                                       str(w / "r")], "does not parse"),
    ("run-yaml-python-tag", lambda w: ["run", _config(w, 'a: !!python/object/apply:os.system '
                                       '["touch pwned"]\n', ".yaml"), "--out", str(w / "r")],
     "does not parse"),
    ("run-k-1", lambda w: ["run", _config(w, "[cluster]\nk = 1\n", ".toml"), "--out",
                           str(w / "r")], "cluster.k must be >= 2"),
    ("run-k-string", lambda w: ["run", _config(w, '[cluster]\nk = "1"\n', ".toml"), "--out",
                                str(w / "r")], "cluster.k must be an integer"),
    ("run-strategies-string", lambda w: ["run", _config(w, '[sample]\nstrategies = "top1"\n',
                                         ".toml"), "--out", str(w / "r")], "must be a list"),
    ("run-lr-fast", lambda w: ["run", _config(w, '[router]\nlr = "fast"\n', ".toml"), "--out",
                               str(w / "r")], "must be a number"),
    ("run-out-file", lambda w: ["run", "--out", _existing_file(w)], "is not a folder"),
    ("run-out-unwritable", lambda w: ["run", "--out", UNWRITABLE], "cannot write in"),
    ("expert-flow-v", lambda w: [*EXPERT, "--objective", "flow", "--prediction", "v", "--out",
                                 str(w / "e")], "does not fit objective 'flow'"),
    ("expert-out-file", lambda w: [*EXPERT, "--out", _existing_file(w)], "is not a folder"),
    ("expert-out-fifo", lambda w: [*EXPERT, "--out", _fifo(w)], "is not a folder"),
    ("expert-out-unwritable", lambda w: [*EXPERT, "--out", UNWRITABLE], "cannot write in"),
    ("expert-init-mismatch", lambda w: [*EXPERT, "--init", _init_mismatch(w), "--out",
                                        str(w / "e")], "weights do not fit the spec's model"),
    ("cluster-out-folder", lambda w: [*CLUSTER, "--out", str(w)], "is a folder"),
    ("cluster-out-unwritable", lambda w: [*CLUSTER, "--out", UNWRITABLE + ".json"],
     "cannot write in"),
    ("sample-out-folder", lambda w: [*SAMPLE, "--expert", _crafted(w), "--out", str(w)],
     "is a folder"),
    ("sample-out-fifo", lambda w: [*SAMPLE, "--expert", _crafted(w), "--out", _fifo(w)],
     "special file"),
    ("sample-out-device", lambda w: [*SAMPLE, "--expert", _crafted(w), "--out", _device(w)],
     "special file"),
    ("sample-out-unwritable", lambda w: [*SAMPLE, "--expert", _crafted(w), "--out",
                                         UNWRITABLE + ".png"], "cannot write in"),
    ("spec-timesteps-abc", lambda w: [*SAMPLE, "--expert", _crafted(
        w, schedule={"name": "linear", "num_train_timesteps": "abc"}), "--out",
        str(w / "s.png")], "num_train_timesteps must be an integer"),
    ("spec-alphas-x", lambda w: [*SAMPLE, "--expert", _crafted(
        w, schedule={"name": "table", "alphas_cumprod": ["x"]}), "--out", str(w / "s.png")],
     "alphas_cumprod must hold numbers"),
    ("spec-huge-timesteps", lambda w: [*SAMPLE, "--expert", _crafted(
        w, schedule={"name": "linear", "num_train_timesteps": 10**10}), "--out",
        str(w / "s.png")], "num_train_timesteps must be an integer in"),
    ("spec-huge-hidden", lambda w: [*SAMPLE, "--expert", _crafted(
        w, model={"hidden_size": 10**10}), "--out", str(w / "s.png")], "hidden_size"),
    ("spec-huge-resolution", lambda w: [*SAMPLE, "--expert", _crafted(
        w, model={"input_size": 10**8}, resolution=10**8), "--out", str(w / "s.png")],
     "must be an integer in"),
    ("spec-big-but-not-the-tensors", lambda w: [*SAMPLE, "--expert", _crafted(
        w, model={"input_size": 4096, "hidden_size": 65536, "depth": 64}, resolution=4096),
        "--out", str(w / "s.png")], "weights do not fit the spec's model"),
    ("spec-byte-flipped", lambda w: [*SAMPLE, "--expert", _time_scale_flipped(w), "--out",
                                     str(w / "s.png")], "changed after writing"),
    ("expert-unsigned", lambda w: [*SAMPLE, "--expert", _unsigned(w), "--out",
                                   str(w / "s.png")], "carries no digest"),
    ("info-unsigned", lambda w: ["info", _unsigned(w)], "--trust-unsigned"),
]  # fmt: skip


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode for p in sorted(folder.rglob("*"))}


def _one_error_line(err: str, match: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hetdiff: error:") and "Traceback" not in err, err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize(("argv", "match"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, argv, match):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = argv(work)
    before = _files(work)
    capsys.readouterr()
    assert main(args) == 2
    _one_error_line(capsys.readouterr().err, match)
    assert _files(work) == before
    assert not Path("/dev/null").is_file()


def test_trust_unsigned_accepts_an_unsigned_checkpoint(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    assert main(["info", _unsigned(work), "--trust-unsigned"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    assert "HETDIFF_TRUST_UNSIGNED" not in os.environ  # only for that command


def _limited(args: list[str], cwd: Path, fsize: int) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hetdiff", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, preexec_fn=limit, timeout=600)  # fmt: skip


@pytest.mark.parametrize("command", ["train-expert", "sample", "cluster"])
def test_a_file_size_limit_is_a_one_line_error_with_nothing_half_written(tmp_path, command):
    expert = write_ddpm_expert(tmp_path / "x.safetensors")
    work = tmp_path / "work"
    work.mkdir()
    argv = {
        "train-expert": [*EXPERT, "--out", str(work / "e")],
        "sample": [*SAMPLE, "--expert", str(expert), "--out", str(work / "s.png")],  # ~300 B
        "cluster": [*CLUSTER, "--out", str(work / "p.json")],
    }[command]
    result = _limited(argv, tmp_path, 64)  # smaller than any file each command writes
    assert result.returncode == 2, result.stderr
    _one_error_line(result.stderr, "File too large")
    assert str(work) in result.stderr  # names the path
    assert not list(work.rglob("*.tmp")) and not list(work.rglob("*.safetensors"))
    assert not list(work.rglob("*.png")) and not (work / "p.json").exists()


def test_a_full_disk_is_a_one_line_error_with_nothing_half_written(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        result = _limited([*EXPERT, "--out", str(disk / "e")], tmp_path, resource.RLIM_INFINITY)
        assert result.returncode == 2, result.stderr
        _one_error_line(result.stderr, "No space left on device")
        assert not list(disk.rglob("*.tmp")) and not list(disk.rglob("*.safetensors"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)
