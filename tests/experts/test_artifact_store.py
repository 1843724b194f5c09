"""The artifact store against a real S3-compatible server (moto in server mode, started by the
test on a free port) and a local folder: atomic uploads, verified checkpoint reads."""

from __future__ import annotations

import pytest

from expert_files import write_ddpm_expert
from hetdiff.errors import HetdiffError
from hetdiff.experts.artifact_store import ArtifactStore
from hetdiff.experts.store import load_expert_state
from s3_server import BUCKET, moto_server

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on localhost with one bucket (``s3_server.moto_server``); yields the
    storage options s3fs needs."""
    with moto_server() as server:
        yield server["options"]


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path):
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "root"))
    options = request.getfixturevalue("s3_endpoint")
    return ArtifactStore(f"s3://{BUCKET}/{tmp_path.name}", options)


def test_a_checkpoint_round_trips_through_the_store_verified(store, tmp_path):
    ckpt = write_ddpm_expert(tmp_path / "expert.safetensors")
    store.put_file("experts/expert-1/expert.safetensors", ckpt)
    assert store.exists("experts/expert-1/expert.safetensors")
    back = store.fetch_expert("experts/expert-1/expert.safetensors", tmp_path / "back.safetensors")
    assert back.read_bytes() == ckpt.read_bytes()
    state, spec = load_expert_state(back)
    assert spec.cluster_id == 1 and spec.steps == 123 and state


def test_an_upload_interrupted_halfway_leaves_no_object_under_the_final_key(store, tmp_path):
    data = write_ddpm_expert(tmp_path / "expert.safetensors").read_bytes()
    half = len(data) // 2

    def interrupted():
        yield data[:half]
        raise OSError("connection reset halfway")

    with pytest.raises(HetdiffError, match="connection reset halfway"):
        store.put_chunks("experts/expert-0/expert.safetensors", interrupted())
    assert not store.exists("experts/expert-0/expert.safetensors")
    leftovers = (
        store.fs.find(store.path("experts")) if store.fs.exists(store.path("experts")) else []
    )
    assert leftovers == []  # the temporary key is removed too
    # an earlier complete object stays whole when a later upload is interrupted
    store.put_bytes("experts/expert-0/expert.safetensors", data)
    with pytest.raises(HetdiffError):
        store.put_chunks("experts/expert-0/expert.safetensors", interrupted())
    assert store.get_bytes("experts/expert-0/expert.safetensors") == data


def test_a_checkpoint_changed_in_the_store_is_refused_on_read(store, tmp_path):
    data = bytearray(write_ddpm_expert(tmp_path / "expert.safetensors").read_bytes())
    data[-10] ^= 0x01  # one bit of one tensor, as a bad disk or a careless copy would
    store.put_bytes("experts/expert-1/expert.safetensors", bytes(data))
    dest = tmp_path / "fetched.safetensors"
    with pytest.raises(HetdiffError, match="does not verify.*changed in the store"):
        store.fetch_expert("experts/expert-1/expert.safetensors", dest)
    assert not dest.exists()
