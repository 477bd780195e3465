"""Feature networks for FID / CMMD: Inception from a checked local file, CLIP embeddings (a tiny random-weight
open_clip model stands in for ViT-L/14@336), and the mini feature network's training, saving and loading."""

import json

import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from arrag.data.downloads import sha256_of
from arrag.evaluation import features as fe
from arrag.evaluation.fidelity import clean_resizer, cmmd, cmmd_images, fid_images, image_features
from arrag.models.clip import clip_embedder

# ----------------------------------------------------------------------------- Inception


def test_inception_extractor_names_a_missing_file_and_its_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"inception-2015-12-05\.pt is missing.*nvlabs-fi-cdn.*download"):
        fe.inception_extractor(tmp_path)


def test_inception_extractor_refuses_a_file_with_the_wrong_hash(tmp_path):
    (tmp_path / fe.INCEPTION_FILE).write_bytes(b"not the Inception network")
    with pytest.raises(ValueError, match=f"expected {fe.INCEPTION_SHA256}"):
        fe.inception_extractor(tmp_path / fe.INCEPTION_FILE)
    (tmp_path / "inception.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be named inception-2015-12-05.pt"):
        fe.inception_extractor(tmp_path / "inception.pt")


class _FakeInceptionLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.proj = torch.nn.Conv2d(3, 2048, 4)

    def forward(self, x):
        return self.proj(self.pool(x))  # [B, 2048, 1, 1], as the real network's pool3


class _FakeInception(torch.nn.Module):
    """A TorchScript module with the attributes clean-fid's InceptionV3W uses (`layers`, `return_features`)."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # clean-fid's Inception is TorchScript
def test_inception_extractor_loads_a_checked_file_through_clean_fid(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / fe.INCEPTION_FILE
    torch.jit.save(torch.jit.script(_FakeInception()), str(path))
    digest = sha256_of(path)
    net = fe.inception_extractor(tmp_path, sha256=digest)
    assert net.input_size == 299 and net.identity["sha256"] == digest
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    feats = image_features(images, net)  # InceptionV3W asserts 299 px: the clean resize happened
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    # download_inception keeps a file that already has the expected hash (no network)
    assert fe.download_inception(tmp_path, sha256=digest) == path
    with pytest.raises(ValueError, match="must be named"):
        fe.download_inception(tmp_path / "weights.pt")


# ----------------------------------------------------------------------------- CLIP


def test_clip_embedder_matches_the_open_clip_model_with_its_normalisation(tiny_clip):
    name, weights, model = tiny_clip
    embedder = clip_embedder(name, pretrained=weights)
    assert embedder.input_size == 32 and embedder.identity["sha256"] == sha256_of(weights)
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    feats = image_features(images, embedder)  # [5, 16]
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)

    resize = clean_resizer(32)
    x = torch.from_numpy(np.stack([resize(im) for im in images])).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)  # the tiny config's preprocess_cfg: open_clip's default
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_image((x - mean) / std), dim=-1).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)


def test_cmmd_from_clip_embeddings_is_zero_for_one_set_and_positive_otherwise(tiny_clip):
    name, weights, _ = tiny_clip
    embedder = clip_embedder(name, pretrained=weights)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 128, (12, 16, 16, 3), dtype=np.uint8)
    other = rng.integers(128, 256, (12, 16, 16, 3), dtype=np.uint8)
    assert cmmd_images(images, images, embedder) == pytest.approx(0.0, abs=1e-9)
    assert cmmd_images(other, images, embedder) > 1e-3
    feats = image_features(images, embedder)
    assert cmmd(feats, image_features(other, embedder)) == pytest.approx(cmmd_images(other, images, embedder))


def test_clip_embedder_refuses_unpinned_or_missing_weights(tiny_clip, tmp_path):
    name, weights, _ = tiny_clip
    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors is neither a weights file"):
        clip_embedder(name, pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not pinned"):
        clip_embedder("hf-hub:org/repo", pretrained=weights)
    with pytest.raises(ValueError, match="give arrag-tiny-clip's weights"):
        clip_embedder(name)
    with pytest.raises(ValueError, match="expected 00"):
        clip_embedder(name, pretrained=weights, sha256="00" * 32)


# ----------------------------------------------------------------------------- mini feature network


def test_scene_targets_of_a_record():
    record = {
        "objects": [
            {"shape": "circle", "colour": "red", "bbox": [0, 0, 8, 8]},
            {"shape": "circle", "colour": "blue", "bbox": [10, 0, 18, 8]},
        ],
        "background": "stripes",
    }
    t = fe.scene_targets([record])
    assert [fe.PAIRS[i] for i in np.flatnonzero(t["pairs"][0])] == [("red", "circle"), ("blue", "circle")]
    assert t["colours"][0].tolist() == [1, 0, 0, 0, 1, 0] and t["shapes"][0].tolist() == [1, 0, 0, 0]
    assert t["count"][0] == 1 and t["background"][0] == 2


@pytest.fixture(scope="module")
def world():
    from arrag.data.mini_world import make_split

    return make_split("features", 400, seed=0)


def test_feature_network_learns_saves_and_loads_identically(world, tmp_path):
    images, records = world
    cfg = fe.MiniFeatureConfig(steps=150, batch_size=32, width=8, feature_dim=16, heldout_fraction=0.25)
    torch.manual_seed(cfg.seed)
    untrained = fe.head_accuracy(fe.MiniFeatureNet(cfg.width, cfg.feature_dim), images[:100], records[:100])
    model, summary = fe.train_feature_network(images, records, cfg, tmp_path / "net")
    acc = summary["heldout_accuracy"]
    assert acc["images"] == 100 and summary["train_images"] == 300
    assert acc["colours"] > untrained["colours"] + 0.2  # it learned which colours a scene holds

    saved = json.loads((tmp_path / "net" / "config.json").read_text())
    assert saved["config"] == {**cfg.__dict__} and saved["heldout_accuracy"] == acc
    loaded = fe.load_feature_network(tmp_path / "net")
    assert loaded.identity == model.identity and len(loaded.identity["sha256"]) == 64
    x = torch.from_numpy(images[:8]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert image_features(images[:8], loaded).shape == (8, 16)
    # mini-FID: a set against itself is 0, against another split of the world it is not
    assert fid_images(images[:100], images[:100], loaded) == pytest.approx(0.0, abs=1e-6)
    assert fid_images(images[:100], images[100:300], loaded) > 0


def test_feature_network_refuses_other_sizes_and_missing_weights(tmp_path):
    with pytest.raises(ValueError, match="takes 32 px images"):
        fe.MiniFeatureNet(4, 8)(torch.zeros(1, 3, 16, 16))
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing: train the mini feature network"):
        fe.load_feature_network(tmp_path / "nowhere")
