"""Every artefact is verified on load (arrag.manifest): a changed byte, a missing tensor, a database of another
codebook, FAiD with another database or base model, RA-CM3 with another image index are refused, naming the
file or the digests and the fix."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import arrag.manifest as manifest
import arrag.models.faid_training as ft
from arrag.cli import main
from arrag.data.code_shards import load_code_shard, write_code_shard
from arrag.models.janus import ModelLoadError, load_janus, save_janus
from arrag.models.vq import VQTokenizer, codebook_fingerprint
from arrag.retrieval.database import PatchDatabase

CAPTIONS = ["a photo of a red circle", "a photo of two squares", "a photo of a triangle", "a photo of a blue circle"]


def flip_byte(path, offset=-1):
    """Change one byte of a file in place (offset from the end by default: tensor or vector data)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def grids(spec, n, seed=0):
    return torch.randint(
        0, spec.codebook_size, (n, spec.grid, spec.grid), generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture()
def saved_model(tiny_janus, tmp_path):
    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    return tmp_path / "base"


@pytest.fixture()
def other_codebook_model(tiny_janus, tmp_path):
    """The tiny model with another VQ codebook, saved."""
    model, processor, _ = tiny_janus
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.vqmodel.quantize.embedding.weight.add_(0.1)
    save_janus(other, processor, tmp_path / "other")
    return tmp_path / "other"


# ---------------------------------------------------------------- changed bytes are named


def test_a_flipped_byte_in_a_faiss_index_is_named(tiny_janus, tmp_path):
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    PatchDatabase.build(grids(spec, 20), codebook, index="flat").save(tmp_path / "db")
    assert len(PatchDatabase.load(tmp_path / "db", codebook)) == 20 * spec.grid**2
    flip_byte(tmp_path / "db" / "index.faiss", -8)  # a key vector's float: FAISS itself reads it without complaint
    with pytest.raises(ValueError, match=r"index\.faiss: content differs from its manifest.*arrag build-db"):
        PatchDatabase.load(tmp_path / "db", codebook)


def test_a_flipped_byte_in_safetensors_is_named(saved_model):
    load_janus(saved_model)
    flip_byte(saved_model / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: content differs from its manifest"):
        load_janus(saved_model)


def test_a_flipped_byte_in_a_code_shard_is_named(tmp_path):
    codes = np.arange(2 * 16).reshape(2, 4, 4) % 64
    meta = {"codebook_size": 64, "codebook_sha256": "0" * 64}
    write_code_shard(tmp_path / "codes", 0, 1, codes, np.arange(2), meta)
    npz = tmp_path / "codes" / "codes-00000-of-00001.npz"
    assert load_code_shard(npz)[0].tolist() == codes.tolist()
    flip_byte(npz, 100)
    with pytest.raises(ValueError, match=r"codes-00000-of-00001\.npz: content differs from its manifest"):
        load_code_shard(npz)


def test_a_rewrite_that_restores_the_mtime_is_still_caught(tiny_janus, tmp_path):
    """The full check is skipped only for files whose inode, size, mtime and ctime are those of the last full
    check: restoring the mtime after a write leaves the ctime changed."""
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    PatchDatabase.build(grids(spec, 10), codebook, index="flat").save(tmp_path / "db")
    path = tmp_path / "db" / "codes.npy"
    st = path.stat()
    flip_byte(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match=r"codes\.npy: content differs"):
        PatchDatabase.load(tmp_path / "db", codebook)


def test_only_the_first_load_hashes(tiny_janus, tmp_path, monkeypatch):
    """Saving hashes the files and remembers them: loads check sizes only, until a file is written again."""
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    PatchDatabase.build(grids(spec, 10), codebook, index="flat").save(tmp_path / "db")
    hashed = []
    real = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    PatchDatabase.load(tmp_path / "db", codebook)
    assert hashed == []
    (tmp_path / "db" / "image_ids.npy").write_bytes((tmp_path / "db" / "image_ids.npy").read_bytes())  # same bytes
    PatchDatabase.load(tmp_path / "db", codebook)
    assert sorted(hashed) == ["codes.npy", "image_ids.npy", "index.faiss", "metadata.json"]
    hashed.clear()
    PatchDatabase.load(tmp_path / "db", codebook)
    assert hashed == []


def test_incomplete_truncated_extra_or_edited_artefacts_are_refused(tiny_janus, tmp_path):
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    PatchDatabase.build(grids(spec, 10), codebook, index="flat").save(tmp_path / "db")
    db = tmp_path / "db"
    body = json.loads((db / "MANIFEST.json").read_text())
    (db / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match=r"stray\.txt is not listed"):
        PatchDatabase.load(db, codebook)
    (db / "stray.txt").unlink()
    (db / ".snakemake_timestamp").write_text("")  # hidden files are not part of an artefact
    PatchDatabase.load(db, codebook)
    edited = {**body, "inputs": {**body["inputs"], "code_shards": ["forged"]}}
    (db / "MANIFEST.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="edited or is damaged"):
        PatchDatabase.load(db, codebook)
    (db / "MANIFEST.json").write_text(json.dumps(body))
    with open(db / "codes.npy", "r+b") as f:
        f.truncate(64)
    with pytest.raises(ValueError, match=r"codes\.npy: 64 bytes, the manifest says \d+: truncated"):
        PatchDatabase.load(db, codebook)
    (db / "MANIFEST.json").unlink()  # as if interrupted before the manifest, written last
    with pytest.raises(ValueError, match=r"MANIFEST\.json is missing: .* incomplete"):
        PatchDatabase.load(db, codebook)


def test_metadata_files_are_read_by_one_reader_naming_the_file_the_field_and_the_fix(tmp_path):
    """read_metadata (shards, locks, exclusion lists) and read_artefact_metadata (artefact folders): a missing,
    non-JSON, non-object or other-format file is refused with its path, the field and the fix; an artefact's
    metadata file is checked against the manifest first, so an edit is reported as one."""
    from arrag.io import read_metadata

    path = tmp_path / "meta.json"
    with pytest.raises(FileNotFoundError, match=r"meta\.json is missing: run the thing"):
        read_metadata(path, "mine/1", "run the thing")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json is not valid JSON \(.*\): run the thing"):
        read_metadata(path, "mine/1", "run the thing")
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"meta\.json holds a JSON list, not an object: run the thing"):
        read_metadata(path, "mine/1", "run the thing")
    path.write_text(json.dumps({"format": "mine/0"}))
    with pytest.raises(ValueError, match=r"meta\.json: field 'format' differs: expected 'mine/1', found 'mine/0'; run"):
        read_metadata(path, "mine/1", "run the thing")
    assert read_metadata(path, None, "run the thing") == {"format": "mine/0"}  # no format to check
    path.write_text(json.dumps({"format": "mine/1", "count": 3}))
    assert read_metadata(path, "mine/1", "run the thing")["count"] == 3

    folder = tmp_path / "artefact"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"artefact/meta\.json is missing: build it"):
        manifest.read_artefact_metadata(folder, "meta.json", "thing", "mine/1", "build it")
    (folder / "meta.json").write_text(json.dumps({"format": "mine/0"}))
    with pytest.raises(ValueError, match=r"MANIFEST\.json is missing: .* incomplete"):
        manifest.read_artefact_metadata(folder, "meta.json", "thing", "mine/1", "build it")
    manifest.write_manifest(folder, "thing")
    with pytest.raises(ValueError, match=r"a 'thing' artefact, expected a 'other'"):
        manifest.read_artefact_metadata(folder, "meta.json", "other", "mine/1", "build it")
    with pytest.raises(ValueError, match=r"meta\.json: field 'format' differs: expected 'mine/1', found 'mine/0'"):
        manifest.read_artefact_metadata(folder, "meta.json", "thing", "mine/1", "build it")
    (folder / "meta.json").write_text(json.dumps({"format": "mine/1"}))  # edited after sealing
    with pytest.raises(ValueError, match=r"meta\.json: content differs from its manifest.*build it"):
        manifest.read_artefact_metadata(folder, "meta.json", "thing", "mine/1", "build it")
    body = manifest.write_manifest(folder, "thing")
    meta, found = manifest.read_artefact_metadata(folder, "meta.json", "thing", "mine/1", "build it")
    assert meta == {"format": "mine/1"} and found["digest"] == body["digest"]


def test_verify_command_checks_every_byte_and_seals(saved_model, tmp_path, capsys):
    assert main(["verify", str(saved_model)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "janus-model" and report["bytes"] > 0 and len(report["digest"]) == 64
    flip_byte(saved_model / "model.safetensors")
    assert main(["verify", str(saved_model)]) == 2
    assert "model.safetensors: content differs" in capsys.readouterr().err
    # a model saved outside arrag is refused until the user seals it
    (saved_model / "MANIFEST.json").unlink()
    with pytest.raises(ValueError, match="arrag verify --seal janus-model"):
        load_janus(saved_model)
    assert main(["verify", "--seal", "janus-model", str(saved_model)]) == 0
    capsys.readouterr()
    load_janus(saved_model)
    # a folder of code shards: each shard
    write_code_shard(tmp_path / "codes", 0, 2, np.zeros((1, 4, 4), int), np.arange(1), {"codebook_size": 8})
    write_code_shard(tmp_path / "codes", 1, 2, np.ones((1, 4, 4), int), np.arange(1), {"codebook_size": 8})
    assert main(["verify", str(tmp_path / "codes")]) == 0
    assert [json.loads(line)["kind"] for line in capsys.readouterr().out.splitlines()] == ["arrag-codes/1"] * 2


# ---------------------------------------------------------------- weights fill the model exactly


def _rewrite_weights(directory, change):
    state = load_file(directory / "model.safetensors")
    change(state)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "MANIFEST.json").unlink()
    manifest.seal(directory, "janus-model")  # the files are what the user says: the key check must catch it


def test_a_model_missing_a_tensor_is_refused_naming_it(saved_model):
    name = "model.generation_head.vision_head.weight"
    _rewrite_weights(saved_model, lambda state: state.pop(name))
    with pytest.raises(ModelLoadError, match=rf"lack tensors the model needs .*{name}"):
        load_janus(saved_model)


def test_a_model_with_an_unexpected_tensor_is_refused_naming_it(saved_model):
    _rewrite_weights(saved_model, lambda state: state.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match=r"no place for: model\.extra\.weight"):
        load_janus(saved_model)


def test_a_faid_checkpoint_missing_a_tensor_is_refused_naming_it(tmp_path):
    from arrag.models.faid import FAiD, FAiDConfig

    FAiD(FAiDConfig(every=1, k=4, rank=4), hidden_size=32, num_layers=2).save(tmp_path / "faid")
    state = load_file(tmp_path / "faid" / "faid.safetensors")
    dropped = sorted(state)[0]
    state.pop(dropped)
    save_file(state, tmp_path / "faid" / "faid.safetensors")
    with pytest.raises(ValueError, match=rf"faid\.safetensors lacks tensors .*{dropped}"):
        FAiD.load(tmp_path / "faid")


# ---------------------------------------------------------------- what an artefact was built from


def test_build_db_refuses_code_shards_of_another_codebook(
    tiny_janus, saved_model, other_codebook_model, tmp_path, capsys
):
    model, _, spec = tiny_janus
    other_codebook = VQTokenizer.from_janus(load_janus(other_codebook_model)[0]).codebook
    meta = {"codebook_size": spec.codebook_size, "codebook_sha256": codebook_fingerprint(other_codebook)}
    write_code_shard(tmp_path / "codes", 0, 1, grids(spec, 6).numpy(), np.arange(6), meta)
    shard = str(tmp_path / "codes" / "codes-00000-of-00001.npz")
    args = ["build-db", "--codes", shard, "--index", "flat", "--out", str(tmp_path / "db")]
    assert main([*args[:1], "--model", str(saved_model), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "codes-00000-of-00001.npz was tokenised with another VQ codebook" in err and "re-tokenise" in err
    assert not (tmp_path / "db").exists()
    # with the model the shards were made with, the database records them
    assert main([*args[:1], "--model", str(other_codebook_model), *args[1:]]) == 0
    built = json.loads((tmp_path / "db" / "MANIFEST.json").read_text())["inputs"]
    shard_meta = json.loads((tmp_path / "codes" / "codes-00000-of-00001.json").read_text())
    assert built == {"codebook_sha256": meta["codebook_sha256"], "code_shards": [shard_meta["manifest"]["digest"]]}


@pytest.fixture()
def trained_faid(tiny_janus, saved_model, tmp_path):
    """FAiD trained (2 steps) on the saved tiny model with candidates from database db; db2 is another."""
    model, _, spec = tiny_janus
    codebook = VQTokenizer.from_janus(model).codebook
    PatchDatabase.build(grids(spec, 30), codebook, index="flat").save(tmp_path / "db")
    PatchDatabase.build(grids(spec, 30, seed=1), codebook, index="flat").save(tmp_path / "db2")
    db = PatchDatabase.load(tmp_path / "db", codebook)
    ft.build_trainset(model, db, grids(spec, 8), (CAPTIONS * 2)[:8], k=4, out_dir=tmp_path / "trainset")
    cfg = ft.FAiDTrainingConfig(steps=2, batch_size=4, every=1, k=4, rank=4, checkpoint_every=0)
    ft.train_faid(
        saved_model, tmp_path / "trainset", cfg, tmp_path / "faid", manifest.identity(tmp_path / "db"), cpu=True
    )
    return tmp_path


def test_generation_refuses_faid_with_another_database(trained_faid, saved_model, capsys):
    tmp = trained_faid
    base = ["generate", "--model", str(saved_model), "--prompt", "a photo of a circle", "--n", "1", "--device", "cpu"]
    base += ["--method", "faid", "--faid", str(tmp / "faid")]
    assert main(base + ["--db", str(tmp / "db2"), "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    db1, db2 = manifest.identity(tmp / "db"), manifest.identity(tmp / "db2")
    assert f"another database (digest {db1[:16]}" in err and f"(digest {db2[:16]}" in err
    assert "generate with the database it was trained with (--db)" in err
    assert main(base + ["--db", str(tmp / "db"), "--out", str(tmp / "ok")]) == 0
    inputs = json.loads((tmp / "faid" / "MANIFEST.json").read_text())["inputs"]
    assert inputs["database"] == db1 and inputs["trainset"] == manifest.identity(tmp / "trainset")


def test_faid_identity_covers_the_whole_base_model(trained_faid, tiny_janus):
    """A change to any weight, here one of a decoder layer (not the codebook or the generation head), is
    refused."""
    model, _, _ = tiny_janus
    ft.load_faid(trained_faid / "faid", model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.language_model.layers[0].mlp.down_proj.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match=r"another base model .*\['weights'\]"):
        ft.load_faid(trained_faid / "faid", other)


def test_training_faid_refuses_a_trainset_of_another_database(trained_faid, saved_model, capsys):
    tmp = trained_faid
    args = ["train-faid", "--model", str(saved_model), "--trainset", str(tmp / "trainset"), "--db", str(tmp / "db2")]
    assert main([*args, "--out", str(tmp / "faid2"), "--cpu", "--set", "steps=1"]) == 2
    assert "was built from another database" in capsys.readouterr().err


def test_racm3_refuses_another_image_index(tiny_janus, tmp_path):
    from arrag.baselines.racm3 import RACM3Pipeline, RACM3TrainingConfig, train_racm3
    from arrag.retrieval.image_index import BagOfWordsEncoder, ImageLevelIndex

    model, processor, spec = tiny_janus
    save_janus(model, processor, tmp_path / "base")
    sha = codebook_fingerprint(VQTokenizer.from_janus(model).codebook)
    for name, seed in (("index", 0), ("index2", 1)):
        codes = grids(spec, 4, seed).numpy()
        encoder = BagOfWordsEncoder.from_captions(CAPTIONS)
        ImageLevelIndex.build(CAPTIONS, codes, np.arange(4), encoder, sha).save(tmp_path / name)
    index = ImageLevelIndex.load(tmp_path / "index")
    cfg = RACM3TrainingConfig(steps=1, batch_size=4, checkpoint_every=0)
    codes = torch.from_numpy(index.codes.astype(np.int64))
    train_racm3(tmp_path / "base", codes, CAPTIONS, index, cfg, tmp_path / "racm3", device="cpu")
    RACM3Pipeline.from_pretrained(tmp_path / "racm3", tmp_path / "index", device="cpu")
    with pytest.raises(ValueError, match=r"another image index .*pass the index it was trained with"):
        RACM3Pipeline.from_pretrained(tmp_path / "racm3", tmp_path / "index2", device="cpu")
    with pytest.raises(ValueError, match="another image index"):  # a base model records none
        RACM3Pipeline.from_pretrained(tmp_path / "base", tmp_path / "index", device="cpu")


def test_attribution_reads_a_verified_database_table(tiny_janus, tmp_path):
    from arrag.visualise import load_database_images

    model, _, spec = tiny_janus
    PatchDatabase.build(grids(spec, 4), VQTokenizer.from_janus(model).codebook, index="flat").save(tmp_path / "db")
    with pytest.raises(ValueError, match="records no image sources"):
        load_database_images(tmp_path / "db", {0}, 16)
    meta = json.loads((tmp_path / "db" / "metadata.json").read_text())
    meta["sources"] = [{"source": {"type": "folder", "path": "/elsewhere"}, "offset": 0}]
    (tmp_path / "db" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata\.json: \d+ bytes, the manifest says"):
        load_database_images(tmp_path / "db", {0}, 16)
