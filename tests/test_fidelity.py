"""CMMD against a direct re-computation, the Fréchet distance against a closed form, FWD's invariants, FID through
clean-fid against a direct computation, and the checks on the sets FID and CMMD compare."""

import numpy as np
import pytest
import torch
from scipy import linalg

from arrag.evaluation.fidelity import cmmd, frechet_distance, fwd, wavelet_packets


def test_cmmd_matches_a_direct_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.5
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * 10.0**2))

    kxx = np.mean([k(a, b) for a in xn for b in xn])
    kyy = np.mean([k(a, b) for a in yn for b in yn])
    kxy = np.mean([k(a, b) for a in xn for b in yn])
    assert cmmd(x, y) == pytest.approx(1000 * (kxx + kyy - 2 * kxy), rel=1e-9)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9) and cmmd(x, y) > 0
    assert cmmd(3 * x, y) == pytest.approx(cmmd(x, y))  # embeddings are L2-normalised first
    with pytest.raises(ValueError, match="one width"):
        cmmd(x, y[:, :3])


def test_frechet_distance_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 1 + 4 + sum((np.sqrt(a) - np.sqrt(b)) ** 2 for a, b in [(1, 9), (4, 1)])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_wavelet_packets_shape_and_energy():
    """A Haar packet transform is orthogonal: the coefficients keep the image's energy."""
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    packets = wavelet_packets(images, level=2, size=16)
    assert packets.shape == (3, 16, 3 * 4 * 4)
    pixels = images.astype(np.float64) / 255
    assert float((packets**2).sum()) == pytest.approx(float((pixels**2).sum()), rel=1e-9)


def test_fwd_is_zero_for_one_set_and_grows_with_the_difference():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 200, (40, 16, 16, 3), dtype=np.uint8)
    assert fwd(images, images, level=2, size=16) == pytest.approx(0.0, abs=1e-6)
    slightly = np.clip(images.astype(int) + 10, 0, 255).astype(np.uint8)
    more = np.clip(images.astype(int) + 40, 0, 255).astype(np.uint8)
    near, far = fwd(images, slightly, level=2, size=16), fwd(images, more, level=2, size=16)
    assert 0 < near < far


# ----------------------------------------------------------------------------- FID / CMMD through clean-fid


class TinyNet(torch.nn.Module):
    """A fixed random conv net: [B, 3, s, s] in [0, 255] -> [B, 8] features (a stand-in for Inception)."""

    def __init__(self, input_size: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.input_size = input_size
        self.conv = torch.nn.Conv2d(3, 2, 5, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return torch.tanh(self.pool(self.conv(x / 255))).flatten(1)  # [B, 2 * 2 * 2]


def _images(seed: int, n: int = 40, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (n, size, size, 3), dtype=np.uint8)


def _geneval_folder(root, images, per_prompt: int = 4):
    from arrag.data.geneval_layout import write_prompt_folder

    for i in range(0, len(images), per_prompt):
        write_prompt_folder(root, i // per_prompt, {"prompt": f"p{i}"}, images[i : i + per_prompt])
    return root


def test_fid_through_clean_fid_equals_a_direct_frechet_distance(tmp_path):
    from arrag.evaluation.fidelity import fid, image_features

    net = TinyNet().eval()
    a, b = _images(0), np.clip(_images(1).astype(int) + 30, 0, 255).astype(np.uint8)
    feats_a, feats_b = image_features(a, net), image_features(b, net)
    with torch.no_grad():  # at the network's own size the clean resize changes nothing
        direct_a = net(torch.from_numpy(a).permute(0, 3, 1, 2).float()).numpy()
    np.testing.assert_allclose(feats_a, direct_a, rtol=1e-5, atol=1e-6)
    # a GenEval-layout folder of the same images goes through clean-fid's file loader to the same features
    np.testing.assert_allclose(image_features(_geneval_folder(tmp_path / "a", a), net), feats_a, rtol=1e-5, atol=1e-6)

    mu_a, mu_b = feats_a.astype(np.float64).mean(0), feats_b.astype(np.float64).mean(0)
    cov_a, cov_b = np.cov(feats_a.astype(np.float64), rowvar=False), np.cov(feats_b.astype(np.float64), rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    assert fid(feats_a, feats_b) == pytest.approx(expected, rel=1e-6)
    assert fid(feats_a, feats_b) == pytest.approx(frechet_distance(mu_a, cov_a, mu_b, cov_b), rel=1e-6)


def test_fid_is_zero_for_one_set_and_grows_with_a_shift():
    from arrag.evaluation.fidelity import fid_images

    net = TinyNet().eval()
    images = _images(2)
    near = np.clip(images.astype(int) + 10, 0, 255).astype(np.uint8)
    far = np.clip(images.astype(int) + 50, 0, 255).astype(np.uint8)
    assert fid_images(images, images, net) == pytest.approx(0.0, abs=1e-6)
    assert 0 < fid_images(near, images, net) < fid_images(far, images, net)


def test_image_features_resize_to_the_extractor_input_size(tmp_path):
    """Arrays and folders both reach the extractor through clean-fid's clean (PIL bicubic, float) resizer."""
    from cleanfid.resize import make_resizer

    from arrag.evaluation.fidelity import image_features

    net = TinyNet(input_size=24).eval()
    images = _images(3, n=6)
    np.save(tmp_path / "ref.npy", images)
    resize = make_resizer("PIL", False, "bicubic", (24, 24))
    with torch.no_grad():
        direct = net(torch.from_numpy(np.stack([resize(im) for im in images])).permute(0, 3, 1, 2)).numpy()
    for source in (images, tmp_path / "ref.npy", _geneval_folder(tmp_path / "gen", images, per_prompt=2)):
        np.testing.assert_allclose(image_features(source, net, batch_size=4), direct, rtol=1e-5, atol=1e-6)


def test_fid_and_cmmd_refuse_sets_they_should_not_compare(tmp_path):
    from arrag.evaluation.fidelity import check_sets, cmmd_images, fid, fid_images

    net = TinyNet().eval()
    np.save(tmp_path / "ref.npy", _images(4, n=8))
    gen = _geneval_folder(tmp_path / "gen", _images(5, n=12))
    with pytest.raises(ValueError, match=r"ref\.npy has 8 images, fewer than the 12 generated.*at least 12"):
        fid_images(gen, tmp_path / "ref.npy", net)
    with pytest.raises(ValueError, match="gen"):
        cmmd_images(gen, tmp_path / "ref.npy", net)
    with pytest.raises(ValueError, match="at least 2 images"):
        check_sets(_images(6, n=1), _images(7, n=5))
    with pytest.raises(ValueError, match="at least 2 images"):
        fid(np.zeros((1, 8)), np.zeros((5, 8)))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        check_sets(tmp_path / "missing.npy", tmp_path / "ref.npy")
    assert check_sets(tmp_path / "ref.npy", gen) == (8, 12)  # a larger reference is fine


def test_fidelity_streams_folders_and_matches_arrays(tmp_path):
    from arrag.evaluation.fidelity import cmmd_images, fid_images, fidelity_scores, fwd_images, load_images

    gen, ref = _images(5, n=12), _images(6, n=16)
    _geneval_folder(tmp_path / "gen", gen)
    np.save(tmp_path / "ref.npy", ref)
    lazy = load_images(tmp_path / "gen")
    assert len(lazy) == 12 and np.array_equal(lazy[4:8], gen[4:8])  # a slice loads only that batch
    direct = fwd(gen, ref, level=2, size=16)
    assert fwd_images(tmp_path / "gen", tmp_path / "ref.npy", level=2, size=16) == pytest.approx(direct)
    net = TinyNet()
    net.identity = {"name": "tiny"}
    result = fidelity_scores(
        tmp_path / "gen", tmp_path / "ref.npy", fid_network=net, cmmd_network=net, fwd_level=2, fwd_size=16
    )
    assert result["fwd"] == pytest.approx(direct) and (result["images"], result["reference_images"]) == (12, 16)
    assert result["fid"] == pytest.approx(fid_images(gen, ref, net)) and result["fid_network"] == {"name": "tiny"}
    assert result["cmmd"] == pytest.approx(cmmd_images(gen, ref, net))


def test_fidelity_command_fwd_only_and_its_errors(tmp_path, capsys):
    import json

    from arrag.cli import main

    gen = _images(7, n=8)
    _geneval_folder(tmp_path / "gen", gen)
    np.save(tmp_path / "ref.npy", gen)
    args = ["fidelity", "--images", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref.npy")]
    assert main(args + ["--fwd-level", "2", "--fwd-size", "16", "--out-json", str(tmp_path / "f.json")]) == 0
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["fwd"] == pytest.approx(0.0, abs=1e-6) and "fid" not in result  # the same images, no network
    np.save(tmp_path / "small.npy", gen[:4])
    assert main(["fidelity", "--images", str(tmp_path / "gen"), "--reference", str(tmp_path / "small.npy")]) == 2
    assert "fewer than the 8 generated" in capsys.readouterr().err
    assert main(args + ["--fid-network", "weird:x"]) == 2
    assert "expected mini:DIR" in capsys.readouterr().err


def test_arrays_must_be_uint8_rgb_images():
    from arrag.evaluation.fidelity import fidelity_scores

    good = _images(1, n=8)
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\], got float32 \(8, 3, 16, 16\)"):
        fidelity_scores(good.transpose(0, 3, 1, 2).astype(np.float32), good, fwd_level=2, fwd_size=16)


def test_cmmd_in_row_blocks_equals_the_whole_matrix():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(4100, 6)), rng.normal(size=(300, 6)) + 0.2  # more rows than one 4096-row block
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    yn = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / 200.0).mean()

    full = 1000 * (
        sum(k(xn[i : i + 500], xn) * len(xn[i : i + 500]) for i in range(0, 4100, 500)) / 4100
        + k(yn, yn)
        - 2 * sum(k(xn[i : i + 500], yn) * len(xn[i : i + 500]) for i in range(0, 4100, 500)) / 4100
    )
    assert cmmd(x, y) == pytest.approx(full, rel=1e-9)
