"""MJHQ-30K: prompt records from the metadata, reference extraction, and the pinned, resumable download
(huggingface_hub replaced by a local stand-in: no network here)."""

import json
import zipfile

import pytest

from arrag.data import mjhq

META = {
    "b2": {"category": "animals", "prompt": "a fox"},
    "a1": {"category": "food", "prompt": "a bowl of soup"},
    "c3": {"category": "animals", "prompt": "a cat"},
}


@pytest.fixture
def dataset(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / mjhq.META).write_text(json.dumps(META))
    with zipfile.ZipFile(tmp_path / "src" / mjhq.IMAGES, "w") as z:
        for item_id, entry in META.items():
            z.writestr(f"{entry['category']}/{item_id}.jpg", f"jpeg of {item_id}".encode())
    return tmp_path / "src"


def test_records_in_id_order_by_category_and_limit(dataset):
    records = mjhq.mjhq_records(dataset / mjhq.META)
    assert [r["item_id"] for r in records] == ["a1", "b2", "c3"]
    assert records[0] == {"prompt": "a bowl of soup", "item_id": "a1", "category": "food"}
    assert [r["item_id"] for r in mjhq.mjhq_records(dataset / mjhq.META, ["animals"])] == ["b2", "c3"]
    assert len(mjhq.mjhq_records(dataset / mjhq.META, limit=2)) == 2
    with pytest.raises(ValueError, match="unknown MJHQ-30K categories"):
        mjhq.mjhq_records(dataset / mjhq.META, ["cats"])


def test_extract_reference_writes_the_named_images(dataset, tmp_path):
    records = mjhq.mjhq_records(dataset / mjhq.META, ["animals"])
    assert mjhq.extract_reference(dataset / mjhq.IMAGES, records, tmp_path / "ref") == 2
    assert sorted(p.relative_to(tmp_path / "ref").as_posix() for p in (tmp_path / "ref").rglob("*.jpg")) == [
        "animals/b2.jpg",
        "animals/c3.jpg",
    ]
    with pytest.raises(ValueError, match="different revisions"):
        mjhq.extract_reference(dataset / mjhq.IMAGES, [{"item_id": "zz", "category": "art"}], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written under the final name


def test_download_pins_the_revision_and_resumes_from_partial(dataset, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, repo_type, revision, local_dir):
        calls.append((repo_id, filename, repo_type, revision))
        (local_dir / filename).write_bytes((dataset / filename).read_bytes())

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    sha = "0123456789abcdef0123456789abcdef01234567"
    manifest = mjhq.download_mjhq(tmp_path / "mjhq", revision=sha)
    assert calls == [(mjhq.REPO_ID, mjhq.META, "dataset", sha), (mjhq.REPO_ID, mjhq.IMAGES, "dataset", sha)]
    assert manifest["revision"] == sha and json.loads((tmp_path / "mjhq/manifest.json").read_text()) == manifest
    assert not (tmp_path / "mjhq.partial").exists()

    mirrored = mjhq.download_mjhq(tmp_path / "from_mirror", mirror=dataset)
    assert mirrored["revision"].startswith("mirror:") and (tmp_path / "from_mirror" / mjhq.IMAGES).is_file()
    with pytest.raises(FileNotFoundError, match="lacks"):
        mjhq.download_mjhq(tmp_path / "x", mirror=tmp_path / "empty")


def test_cli_writes_prompts_and_reference(dataset, tmp_path):
    from arrag.cli import main

    out = tmp_path / "p.jsonl"
    args = ["mjhq-prompts", "--dataset", str(dataset), "--category", "animals", "--out-prompts", str(out)]
    assert main(args + ["--out-reference", str(tmp_path / "ref")]) == 0
    assert [json.loads(line)["item_id"] for line in out.read_text().splitlines()] == ["b2", "c3"]
    assert len(list((tmp_path / "ref").rglob("*.jpg"))) == 2
    assert main(["mjhq-prompts", "--dataset", str(tmp_path / "none"), "--out-prompts", str(out)]) == 2
