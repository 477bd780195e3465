"""CMMD against a direct re-computation, the Fréchet distance against a closed form, FWD's invariants."""

import numpy as np
import pytest

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


def test_fwd_command_reads_a_geneval_folder_and_an_npy(tmp_path, capsys):
    import json

    from arrag.cli import main
    from arrag.data.geneval_layout import write_prompt_folder

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    for i in range(3):
        write_prompt_folder(tmp_path / "gen", i, {"prompt": f"p{i}"}, images[2 * i : 2 * i + 2])
    np.save(tmp_path / "ref.npy", images)
    args = ["fwd", "--images", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref.npy"), "--size", "16"]
    assert main(args + ["--level", "2", "--out-json", str(tmp_path / "fwd.json")]) == 0
    result = json.loads((tmp_path / "fwd.json").read_text())
    assert result["images"] == 6 and result["fwd"] == pytest.approx(0.0, abs=1e-6)  # the same six images
    assert main(["fwd", "--images", str(tmp_path / "empty"), "--reference", str(tmp_path / "ref.npy")]) == 2
    assert "neither a GenEval-layout folder nor an images .npy" in capsys.readouterr().err
