"""Lock files of hub downloads (arrag.data.locks): a branch is resolved once and locked with every file's
SHA-256; later downloads fetch the locked commit and refuse drift; a config that disagrees with its lock is refused."""

import hashlib
import http.server
import json
import threading
import types
import urllib.parse

import pytest

from arrag.data import downloads


@pytest.fixture
def hub(monkeypatch):
    """A stand-in hub: `heads` maps a branch to its current commit, `content` what a download at a commit brings."""
    import huggingface_hub

    state = types.SimpleNamespace(heads={"main": "1" * 40}, content={}, fetched=[])

    def repo_info(self, repo_id, revision, repo_type):
        return types.SimpleNamespace(sha=state.heads[revision])

    def snapshot(repo_id, revision, allow_patterns, local_dir, repo_type):
        state.fetched.append(revision)
        for name, body in state.content.get(revision, {"model.safetensors": b"w-" + revision.encode()}).items():
            (local_dir / name).write_bytes(body)
        (local_dir / ".cache").mkdir(exist_ok=True)  # huggingface_hub's bookkeeping is not locked
        (local_dir / ".cache" / "x.metadata").write_text(revision)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    return state


def test_a_branch_is_resolved_once_and_locked(hub, tmp_path):
    lock = tmp_path / "locks" / "janus.json"
    downloads.download_model("org/model", "main", tmp_path / "a", lock=lock)
    first = json.loads(lock.read_text())
    assert first["commit"] == "1" * 40 and first["revision"] == "main" and first["repo"] == "models/org/model"
    assert first["files"] == {"model.safetensors": hashlib.sha256(b"w-" + b"1" * 40).hexdigest()}

    hub.heads["main"] = "2" * 40  # the branch moves on: the lock keeps the download where it was
    out = downloads.download_model("org/model", "main", tmp_path / "b", lock=lock)
    assert hub.fetched == ["1" * 40, "1" * 40] and (out / "SOURCE").read_text() == f"org/model@{'1' * 40}\n"
    assert json.loads(lock.read_text()) == first
    # the locked commit itself may be configured too
    downloads.download_model("org/model", "1" * 40, tmp_path / "c", lock=lock)


def test_a_config_that_disagrees_with_its_lock_is_refused(hub, tmp_path):
    lock = tmp_path / "janus.json"
    downloads.download_model("org/model", "main", tmp_path / "a", lock=lock)
    with pytest.raises(ValueError, match=r"lock file .*janus.json disagrees with the config.*revision 'main'.*delete"):
        downloads.download_model("org/model", "3" * 40, tmp_path / "b", lock=lock)
    with pytest.raises(ValueError, match="disagrees.*repository"):
        downloads.download_model("org/other", "main", tmp_path / "b", lock=lock)
    with pytest.raises(ValueError, match="disagrees.*files"):
        downloads.download_model("org/model", "main", tmp_path / "b", include=["*.safetensors"], lock=lock)
    assert not (tmp_path / "b").exists()


def test_files_that_drift_from_the_lock_are_refused_and_deleted(hub, tmp_path):
    lock = tmp_path / "janus.json"
    downloads.download_model("org/model", "main", tmp_path / "a", lock=lock)
    hub.content["1" * 40] = {"model.safetensors": b"tampered", "extra.json": b"{}"}
    with pytest.raises(ValueError, match=r"does not match its lock file.*different SHA-256 .*model.safetensors.*new"):
        downloads.download_model("org/model", "main", tmp_path / "b", lock=lock)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial" / "model.safetensors").exists()


def test_a_mirror_needs_a_commit_or_a_lock(hub, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "org--model").mkdir(parents=True)
    (mirror / "org--model" / "model.safetensors").write_bytes(b"w-" + b"1" * 40)
    with pytest.raises(ValueError, match="mirror cannot resolve the branch 'main'"):
        downloads.download_model("org/model", "main", tmp_path / "m", mirror=mirror, lock=tmp_path / "l.json")
    downloads.download_model("org/model", "main", tmp_path / "a", lock=tmp_path / "l.json")  # where there is internet
    out = downloads.download_model("org/model", "main", tmp_path / "m", mirror=mirror, lock=tmp_path / "l.json")
    assert (out / "model.safetensors").exists() and hub.fetched == ["1" * 40]
    (mirror / "org--model" / "model.safetensors").write_bytes(b"another copy")
    with pytest.raises(ValueError, match="does not match its lock"):
        downloads.download_model("org/model", "main", tmp_path / "n", mirror=mirror, lock=tmp_path / "l.json")


def test_an_unset_revision_or_a_broken_lock_is_a_clear_error(hub, tmp_path):
    with pytest.raises(ValueError, match="set its revision to a 40-hex-digit commit, or to a branch"):
        downloads.download_model("org/model", None, tmp_path / "a", lock=tmp_path / "l.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        downloads.download_model("org/model", "main", tmp_path / "a", lock=tmp_path / "bad.json")


class ModelScopeHandler(http.server.BaseHTTPRequestHandler):
    """ModelScope's file listing and file endpoints, for one model."""

    files = {"configuration.json": b"{}", "pytorch_model.bin": b"mplug", "vocab.txt": b"[CLS]"}
    listed_sha = {}

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/api/v1/models/damo/mplug/repo/files":
            listing = [
                {"Path": p, "Type": "blob", "Revision": "c" * 40, "Sha256": self.listed_sha.get(p)} for p in self.files
            ]
            body = json.dumps({"Code": 200, "Data": {"Files": listing + [{"Path": "d", "Type": "tree"}]}}).encode()
        elif url.path == "/api/v1/models/damo/mplug/repo" and query["Revision"] == "c" * 40:
            body = self.files[query["FilePath"]]
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_modelscope_download_is_verified_and_locked(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelScopeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(downloads, "MODELSCOPE", f"http://127.0.0.1:{httpd.server_address[1]}")
    try:
        lock = tmp_path / "mplug.json"
        ModelScopeHandler.listed_sha = {"vocab.txt": hashlib.sha256(b"[CLS]").hexdigest()}
        out = downloads.download_modelscope("damo/mplug", "master", tmp_path / "mplug", lock=lock)
        assert (out / "pytorch_model.bin").read_bytes() == b"mplug" and (out / "vocab.txt").exists()
        locked = json.loads(lock.read_text())
        assert locked["hub"] == "modelscope" and set(locked["files"]) == set(ModelScopeHandler.files)

        ModelScopeHandler.listed_sha = {"vocab.txt": "0" * 64}  # ModelScope's own record disagrees: refused
        with pytest.raises(ValueError, match="does not match the pinned"):
            downloads.download_modelscope("damo/mplug", "master", tmp_path / "x")
        ModelScopeHandler.listed_sha = {}
        ModelScopeHandler.files = {**ModelScopeHandler.files, "pytorch_model.bin": b"changed"}
        with pytest.raises(ValueError, match="does not match the pinned"):  # the lock's digest is the pin now
            downloads.download_modelscope("damo/mplug", "master", tmp_path / "y", lock=lock)
        assert not (tmp_path / "y").exists()
    finally:
        httpd.shutdown()
