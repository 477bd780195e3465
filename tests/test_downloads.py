"""Pinned downloads: verified, resumable (a partial file the server will not resume is restarted), atomic,
from a local HTTP server or a mirror folder."""

import functools
import hashlib
import http.server
import threading

import pytest

from arrag.data.downloads import check_sha256, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "weights.bin").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_fetch_verifies_and_renames(server, tmp_path):
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    dest = fetch(f"{server}/weights.bin", tmp_path / "out" / "w.bin", sha256=digest)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "out" / "w.bin.partial").exists()
    # a stale partial file that the server will not resume (no Range support) is started over
    (tmp_path / "out" / "v.bin.partial").write_bytes(b"garbage")
    assert fetch(f"{server}/weights.bin", tmp_path / "out" / "v.bin", sha256=digest[:8]).read_bytes() == PAYLOAD


def test_wrong_hash_leaves_nothing_under_the_final_name(server, tmp_path):
    with pytest.raises(ValueError, match="does not match the pinned 00000000"):
        fetch(f"{server}/weights.bin", tmp_path / "w.bin", sha256="00000000")
    assert not (tmp_path / "w.bin").exists() and not (tmp_path / "w.bin.partial").exists()


def test_unreachable_url_fails_after_retries(tmp_path):
    with pytest.raises(RuntimeError, match="after 1 tries.*rerun to resume"):
        fetch("http://127.0.0.1:9/none.bin", tmp_path / "n.bin", retries=0, timeout=2)


def test_mirror_folder_is_used_and_verified(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "weights.bin").write_bytes(PAYLOAD)
    dest = fetch("https://example.org/x/weights.bin", tmp_path / "w.bin", mirror=tmp_path / "mirror")
    assert dest.read_bytes() == PAYLOAD
    check_sha256(dest, hashlib.sha256(PAYLOAD).hexdigest())
    with pytest.raises(FileNotFoundError, match="mirror .* lacks other.bin"):
        fetch("https://example.org/other.bin", tmp_path / "o.bin", mirror=tmp_path / "mirror")


def test_model_snapshot_is_pinned_safetensors_only_and_atomic(tmp_path, monkeypatch):
    import huggingface_hub

    from arrag.data.downloads import MODEL_FILES, download_model

    sha = "a" * 40
    seen = {}

    def fake_snapshot(repo_id, revision, allow_patterns, local_dir, repo_type):
        seen.update(repo_id=repo_id, revision=revision, patterns=allow_patterns, repo_type=repo_type)
        (local_dir / "config.json").write_text("{}")
        (local_dir / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    out = download_model("deepseek-community/Janus-Pro-1B", sha, tmp_path / "base")
    assert seen == {
        "repo_id": "deepseek-community/Janus-Pro-1B",
        "revision": sha,
        "patterns": MODEL_FILES,
        "repo_type": "model",
    }
    assert "*.bin" not in MODEL_FILES and (out / "SOURCE").read_text() == f"deepseek-community/Janus-Pro-1B@{sha}\n"
    assert not (tmp_path / "base.partial").exists()
    with pytest.raises(ValueError, match="40-hex-digit commit"):
        download_model("deepseek-community/Janus-Pro-1B", "main", tmp_path / "x")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: None)
    with pytest.raises(ValueError, match="no .safetensors"):
        download_model("some/model", sha, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_dataset_snapshot_checks_the_published_sha256_of_each_large_file(tmp_path, monkeypatch):
    """`download_dataset`: a pinned commit, only the files asked for, each LFS file against the hub's SHA-256; a
    corrupt file is deleted (so a rerun fetches it again) and nothing appears under the final name."""
    import types

    import huggingface_hub

    from arrag.data.downloads import download_dataset

    sha, files = "b" * 40, {"data/train-00000.parquet": b"rows 0", "data/train-00001.parquet": b"rows 1"}
    published = {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}

    def fake_snapshot(repo_id, revision, allow_patterns, local_dir, repo_type):
        assert (repo_id, revision, allow_patterns, repo_type) == ("org/data", sha, ["data/*.parquet"], "dataset")
        for name, body in files.items():
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_bytes(body)
        (local_dir / "README.md").write_text("a small file kept in git")

    def fake_paths_info(self, repo_id, paths, revision, repo_type):
        lfs = lambda name: types.SimpleNamespace(sha256=published[name]) if name in published else None  # noqa: E731
        return [types.SimpleNamespace(path=name, lfs=lfs(name)) for name in paths]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", fake_paths_info)
    out = download_dataset("org/data", sha, ["data/*.parquet"], tmp_path / "mj")
    assert (out / "data/train-00001.parquet").read_bytes() == b"rows 1" and not (tmp_path / "mj.partial").exists()
    assert (out / "SOURCE").read_text() == f"org/data@{sha} data/*.parquet\n"

    published["data/train-00001.parquet"] = "0" * 64  # the hub's record disagrees with what arrived
    with pytest.raises(ValueError, match="rerun the download"):
        download_dataset("org/data", sha, ["data/*.parquet"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial/data/train-00001.parquet").exists()
    with pytest.raises(ValueError, match="40-hex-digit commit"):
        download_dataset("org/data", "main", ["*.tar"], tmp_path / "x")
    with pytest.raises(ValueError, match="patterns"):
        download_dataset("org/data", sha, [], tmp_path / "x")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support (206, 416); the first `cut` responses stop halfway."""

    cut = 0

    def do_GET(self):
        start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
        if start >= len(PAYLOAD):
            self.send_response(416)
            self.end_headers()
            return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if RangeHandler.cut:
            RangeHandler.cut -= 1
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_cut_off_downloads_resume_and_a_whole_partial_file_is_finished(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.bin"
    monkeypatch.setattr("time.sleep", lambda s: None)
    try:
        RangeHandler.cut = 2  # two cut-off bodies: the third try resumes with a Range request and completes
        assert fetch(url, tmp_path / "w.bin", retries=3).read_bytes() == PAYLOAD  # no hash: the length decides
        RangeHandler.cut = 1
        with pytest.raises(RuntimeError, match="after 1 tries"):
            fetch(url, tmp_path / "v.bin", retries=0)
        assert 0 < (tmp_path / "v.bin.partial").stat().st_size < len(PAYLOAD) and not (tmp_path / "v.bin").exists()
        # killed between the last byte and the rename: the server answers 416, the file is checked and renamed
        (tmp_path / "u.bin.partial").write_bytes(PAYLOAD)
        assert fetch(url, tmp_path / "u.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest()).read_bytes() == PAYLOAD
    finally:
        httpd.shutdown()
