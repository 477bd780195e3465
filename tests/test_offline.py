"""Jobs never reach the network: the loaders of the paper path read the local files that download rules fetched,
with every connection refused, and the `arrag` CLI turns the hubs' offline switches on for every job."""

import socket

import pytest
import torch

from arrag.data.downloads import OFFLINE_ENV


class NetworkRefused(OSError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and name lookup raises (a compute node without internet that fails fast)."""

    def refuse(*args, **kwargs):
        raise NetworkRefused(f"network access in an offline test: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for key in OFFLINE_ENV:  # set as a job's are, restored afterwards
        monkeypatch.setenv(key, OFFLINE_ENV[key])


def test_the_refusal_works(no_network):
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("https://huggingface.co", timeout=5)


def test_janus_loads_from_its_download_folder(no_network, tiny_janus, tmp_path):
    from arrag.models.janus import load_janus, save_janus

    model, processor, _ = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    loaded, _ = load_janus(tmp_path / "base")
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.state_dict()[first], model.state_dict()[first])


def test_clip_models_load_from_local_weights(no_network, tiny_clip):
    """RA-CM3's retriever, CMMD's embedder and GenEval's colour classifier, as the paper's jobs call them."""
    from arrag.data.downloads import sha256_of
    from arrag.evaluation.geneval_mask2former import ColourClassifier
    from arrag.models.clip import clip_embedder
    from arrag.retrieval.image_index import ClipTextEncoder

    name, weights, model = tiny_clip
    encoder = ClipTextEncoder.load(name, str(weights), sha256=sha256_of(weights))
    assert encoder(["a red circle"]).shape == (1, 16)
    embedder = clip_embedder(name, weights)
    assert embedder.identity["sha256"] == sha256_of(weights)
    colours = ColourClassifier.from_open_clip(name, str(weights))
    assert colours.class_weights("circle").shape == (16, 10)


def test_the_cli_turns_the_offline_switches_on_for_jobs_not_downloads(monkeypatch, tmp_path):
    import os

    from arrag import cli

    for key in OFFLINE_ENV:
        monkeypatch.setenv(key, "0")
    download = ["download", "file", "--url", "http://127.0.0.1:9/x", "--mirror", str(tmp_path), "--out", "x"]
    assert cli.main(download) == 2  # (the mirror lacks the file)
    assert all(os.environ[key] == "0" for key in OFFLINE_ENV)  # a download keeps the network
    assert cli.main(["mjhq-prompts", "--dataset", str(tmp_path / "none"), "--out-prompts", "p", "--out-reference", "r"])
    assert {key: os.environ[key] for key in OFFLINE_ENV} == OFFLINE_ENV
