"""Image-level retrieval for the RA-CM3 baseline (paper appendix B.1): text query -> the most similar
corpus image, whose VQ tokens become the generation prefix.

Two encoders answer "which corpus image fits this prompt best":

- `ClipTextEncoder` (the paper's): corpus images are embedded by a CLIP image tower (`embed_image_shard`,
  one job per source shard, like tokenisation) and prompts by the same model's text tower (its end-of-text
  token, as open_clip's encode_text takes it); cosine similarity ranks the images. The paper's 512-d
  embeddings are those of ViT-B/32.
- `BagOfWordsEncoder` (the mini profile's stand-in, as the mini world has no pretrained CLIP): each corpus
  image is represented by its caption's bag of words, the prompt likewise, text on both sides.

Directory format "arrag-imageindex/2" (atomic, like every output; the .npy files open memory-mapped, so
generation jobs on one machine share one copy of a large index through the page cache):

    embeddings.npy  [N, E] L2-normalised (float16 for CLIP, float32 for bag-of-words)
    image_ids.npy   int64 [N]
    codes.npy       uint16 [N, H, W] the images' VQ tokens
    index.json      format, encoder (its description: enough to rebuild the query encoder), count, grid,
                    codebook_sha256, tokenizer_id, sources (the code shards' source table, when built from them)
    MANIFEST.json   arrag.manifest, written last; inputs: codebook_sha256, the code (and embedding) shards' digests

CLIP embedding shards "arrag-clip-embeddings/1", one file pair per source shard (arrag.io.write_shard):

    <out_dir>/clip-SSSSS-of-TTTTT.npz   embeddings float16 [N, E], image_ids int64 [N] (positions in the
                                        source's enumeration, as in code shards)
    <out_dir>/clip-SSSSS-of-TTTTT.json  format, shard, num_shards, count, dim, encoder, source, skipped, seconds,
                                        manifest (the .npz's size and SHA-256, arrag.manifest)

Search is exact (brute force over every image, the corpus streamed in blocks so memory stays bounded, on the
GPU when given one). Ties (identical bag-of-words captions are common in the mini world) go to the lowest row,
so a prompt always retrieves the same image.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from arrag.io import atomic_path, read_jsonl, read_shard, write_json, write_shard
from arrag.manifest import read_artefact_metadata, write_manifest

log = logging.getLogger(__name__)

FORMAT = "arrag-imageindex/2"
EMBEDDINGS_FORMAT = "arrag-clip-embeddings/1"
ROW_BLOCK = 1 << 18  # corpus rows scored at once: [queries, 262144] float32 scores
QUERY_BLOCK = 1024  # prompts encoded and searched at once


def words(text: str) -> list[str]:
    """Lower-case alphabetic words: the one tokenisation of both the vocabulary and the queries."""
    return re.findall(r"[a-z]+", text.lower())


class BagOfWordsEncoder:
    """Text -> L2-normalised word-count vector over a fixed vocabulary (unknown words are ignored)."""

    name = "caption-bow"

    def __init__(self, vocabulary: list[str]):
        self.vocabulary = sorted(set(vocabulary))
        self.column = {w: i for i, w in enumerate(self.vocabulary)}

    @classmethod
    def from_captions(cls, captions: list[str]) -> "BagOfWordsEncoder":
        return cls([w for c in captions for w in words(c)])

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), len(self.vocabulary)), dtype=np.float32)  # [N, E]
        for row, text in enumerate(texts):
            for word in words(text):
                if word in self.column:
                    out[row, self.column[word]] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def describe(self) -> dict:
        return {"name": self.name, "vocabulary": self.vocabulary}


class ClipTextEncoder:
    """Text -> L2-normalised CLIP text embedding [N, E] (open_clip), the query side of the CLIP retriever."""

    name = "open_clip"

    def __init__(self, embedder, model_name: str):
        import open_clip

        self.embedder = embedder  # arrag.models.clip.ClipEmbedder: the image side, same weights
        self.model_name = model_name  # a built-in open_clip name, or a config file clip_embedder registered
        self.tokenize = open_clip.get_tokenizer(Path(model_name).stem if model_name.endswith(".json") else model_name)

    @classmethod
    def load(cls, model_name: str, pretrained: str, device: str | torch.device = "cpu", sha256: str | None = None):
        """open_clip weights from a local file (checked against `sha256` when given) or a pretrained tag."""
        from arrag.models.clip import clip_embedder

        return cls(clip_embedder(model_name, pretrained, device=device, sha256=sha256), model_name)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        device = self.embedder.mean.device
        tokens = self.tokenize(list(texts)).to(device)  # [N, context] (long prompts are cut, as CLIP's are)
        return F.normalize(self.embedder.model.encode_text(tokens).float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, S, S, 3] (S = the model's input size) -> L2-normalised float16 [B, E]."""
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().to(self.embedder.mean.device)  # [B, 3, S, S]
        return self.embedder(x).cpu().numpy().astype(np.float16)

    @property
    def input_size(self) -> int:
        return int(self.embedder.input_size)

    def to(self, device: str | torch.device) -> "ClipTextEncoder":
        self.embedder.to(device)
        return self

    def describe(self) -> dict:
        identity = self.embedder.identity
        out = {"name": self.name, "model": self.model_name, "pretrained": identity["pretrained"]}
        return out | ({"sha256": identity["sha256"]} if "sha256" in identity else {})


def encoder_from(description: dict, device: str | torch.device = "cpu"):
    """The query encoder an index (or embedding shard) was built with, from its description."""
    name = description.get("name")
    if name == BagOfWordsEncoder.name:
        return BagOfWordsEncoder(description["vocabulary"])
    if name == ClipTextEncoder.name:
        return ClipTextEncoder.load(description["model"], description["pretrained"], device, description.get("sha256"))
    raise ValueError(f"unknown image-index encoder {name!r}: this build knows 'caption-bow' and 'open_clip'")


# ----------------------------------------------------------------------------- CLIP image embedding shards


def embedding_shard_path(out_dir: str | Path, shard: int, num_shards: int) -> Path:
    return Path(out_dir) / f"clip-{shard:05d}-of-{num_shards:05d}.npz"


def embed_image_shard(
    spec: dict, shard: int, num_shards: int, encoder: ClipTextEncoder, out_dir: str | Path, batch_size: int = 256
) -> dict:
    """CLIP-embed one shard of an image source (arrag.data.sources) and write it; returns its metadata.

    Images are centre-cropped and resized to the model's input size by the sources' preprocessing (shorter
    side, bicubic), as open_clip's own transform does, then normalised by the model's mean and std."""
    from arrag.data.sources import encode_shard

    start = time.perf_counter()
    dim = int(encoder.embedder.identity["dim"])
    empty = np.zeros((0, dim), np.float16)
    encoded = encode_shard(
        spec,
        shard,
        num_shards,
        encoder.input_size,
        encoder.embed_images,
        empty,
        batch_size,
        desc="CLIP-embed",
        scratch_dir=out_dir,
    )
    embeddings = encoded.outputs  # [N, E], memory-mapped: streamed into the .npz by write_shard
    meta = {
        "format": EMBEDDINGS_FORMAT,
        "shard": shard,
        "num_shards": num_shards,
        "count": len(embeddings),
        "dim": dim,
        "encoder": encoder.describe(),
        "source": json.loads(json.dumps(spec, default=str)),
        "skipped": encoded.skipped,
        "seconds": round(time.perf_counter() - start, 3),
    }
    arrays = {"embeddings": embeddings, "image_ids": np.asarray(encoded.image_ids, np.int64)}
    write_shard(embedding_shard_path(out_dir, shard, num_shards), arrays, meta)
    return meta


def load_embedding_shard(npz_path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings float16 [N, E], image_ids int64 [N], metadata) of one CLIP embedding shard."""
    names = ("embeddings", "image_ids")
    (embeddings, image_ids), meta = read_shard(npz_path, EMBEDDINGS_FORMAT, names, "rerun `arrag embed-images`")
    return embeddings, image_ids, meta


# ----------------------------------------------------------------------------- the index


def _keeps_resident(device: torch.device) -> bool:
    return device.type != "cpu"


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class ImageLevelIndex:
    """Corpus images as (embedding, image id, token grid); `retrieve(prompts)` -> row of the best image."""

    def __init__(
        self,
        embeddings: np.ndarray,
        image_ids: np.ndarray,
        codes: np.ndarray,
        encoder,
        codebook_sha256: str,
        tokenizer_id: str = "",
        sources: list[dict] | None = None,
    ):
        if not (len(embeddings) == len(image_ids) == len(codes)):
            raise ValueError(
                f"image index: {len(embeddings)} embeddings, {len(image_ids)} image ids and {len(codes)} token "
                "grids: give one of each per corpus image"
            )
        if len(codes) == 0:
            raise ValueError("image index: the corpus is empty")
        self.embeddings = embeddings  # [N, E], possibly memory-mapped
        self.image_ids = np.asarray(image_ids, dtype=np.int64)  # [N]
        self.codes = codes  # [N, H, W], possibly memory-mapped
        self.encoder = encoder
        self.codebook_sha256, self.tokenizer_id = codebook_sha256, tokenizer_id
        self.sources = list(sources or [])  # [{"source": spec, "offset": first image id}] (code_shards.source_table)
        self.resident: dict[torch.device, torch.Tensor] = {}  # the embeddings copied to a GPU once, stored dtype
        self.built_from: dict[str, list[str]] = {}  # digests of the shards it was built from, for its manifest
        self.identity = ""  # the digest of its manifest once saved or loaded: what RA-CM3 records

    @classmethod
    def build(
        cls,
        captions: list[str],
        codes: np.ndarray,
        image_ids: np.ndarray,
        encoder: BagOfWordsEncoder,
        codebook_sha256: str,
        tokenizer_id: str = "",
        code_shards: list[str] | None = None,
    ) -> "ImageLevelIndex":
        """captions[i] describes the image with id image_ids[i] and token grid codes[i]; `code_shards`: the
        digests of the code shards they came from, recorded in the manifest."""
        index = cls(encoder(captions), image_ids, codes, encoder, codebook_sha256, tokenizer_id)
        index.built_from = {"code_shards": list(code_shards or [])}
        return index

    @classmethod
    def write_from_shards(
        cls,
        code_paths: list[str | Path],
        embedding_paths: list[str | Path],
        encoder: ClipTextEncoder,
        out: str | Path,
        codebook_sha256: str,
        model: str = "the model",
        exclude: str | Path | None = None,
    ) -> "ImageLevelIndex":
        """Write the CLIP index of a tokenised corpus to `out` and open it: code shards (arrag tokenise) joined
        with the CLIP embedding shards of the same sources (arrag embed-images) on each image's source and
        position, without the images the exclusion list `exclude` names (arrag.data.contamination). Refuses
        shards tokenised with another codebook than `model`'s (fingerprint `codebook_sha256`).

        Streams: the image ids of every shard are read first to plan the rows (sorted by global image id), then
        one code shard and one embedding shard at a time is written into the memory-mapped arrays of the index,
        so memory is a few ids per corpus image plus one shard, whatever the corpus (arrag.resources)."""
        from arrag.data.code_shards import (
            code_shard_ids,
            iter_code_shards,
            require_codebook,
            shard_digests,
            source_table,
        )
        from arrag.data.contamination import kept_rows

        code_ids, metas = code_shard_ids(code_paths)  # global ids: each source shifted by its offset
        require_codebook(code_paths, metas, codebook_sha256, model)
        kept = kept_rows(exclude, np.concatenate(code_ids), metas)
        keep = np.split(kept, np.cumsum([len(ids) for ids in code_ids])[:-1])  # per shard
        sources = source_table(metas)
        offsets = {json.dumps(t["source"], sort_keys=True): t["offset"] for t in sources}
        embedded_ids, embedding_digests = [], []
        for path in embedding_paths:
            (ids,), meta = read_shard(Path(path), EMBEDDINGS_FORMAT, ("image_ids",), "rerun `arrag embed-images`")
            if meta["encoder"] != encoder.describe():
                raise ValueError(
                    f"{path} was embedded with {meta['encoder']}, the query encoder is {encoder.describe()}: "
                    "embed the corpus with the same CLIP model and weights"
                )
            key = json.dumps(meta["source"], sort_keys=True)
            if key not in offsets:
                raise ValueError(f"{path} embeds the source {meta['source']}, which none of the code shards hold")
            embedding_digests.append(meta["manifest"]["digest"])
            embedded_ids.append(ids.astype(np.int64) + offsets[key])
        if not embedded_ids:
            raise ValueError("no CLIP embedding shards given")
        kept_ids = np.concatenate([ids[k] for ids, k in zip(code_ids, keep)])
        common = np.intersect1d(kept_ids, np.concatenate(embedded_ids), assume_unique=True)  # [N] sorted: the rows
        if len(kept_ids) > len(common):
            log.warning("%d tokenised images have no CLIP embedding (not readable then?); left out",
                        len(kept_ids) - len(common))  # fmt: skip
        if len(common) == 0:
            raise ValueError("image index: no tokenised image has a CLIP embedding: embed the same sources")
        grid = tuple(metas[0]["grid"])
        index_meta = {
            "format": FORMAT,
            "encoder": encoder.describe(),
            "count": len(common),
            "grid": list(grid),
            "codebook_sha256": codebook_sha256,
            "tokenizer_id": metas[0].get("tokenizer_id", ""),
            "sources": sources,
        }
        inputs = {"codebook_sha256": codebook_sha256, "code_shards": shard_digests(metas),
                  "embedding_shards": embedding_digests}  # fmt: skip
        with atomic_path(Path(out), directory=True) as tmp:
            codes = np.lib.format.open_memmap(tmp / "codes.npy", "w+", np.uint16, (len(common), *grid))
            for (shard, ids, _), k in zip(iter_code_shards(code_paths), keep):  # one shard in memory at a time
                take = k & np.isin(ids, common)
                codes[np.searchsorted(common, ids[take])] = shard[take]
            codes.flush()
            embeddings = None
            for path, ids in zip(embedding_paths, embedded_ids):
                e, _, _ = load_embedding_shard(path)
                if embeddings is None:
                    shape = (len(common), e.shape[1])
                    embeddings = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", np.float16, shape)
                take = np.isin(ids, common)
                embeddings[np.searchsorted(common, ids[take])] = e[take]
            embeddings.flush()
            del codes, embeddings  # close the maps before the manifest hashes the files
            np.save(tmp / "image_ids.npy", common)
            write_json(tmp / "index.json", index_meta)
            write_manifest(tmp, "image-index", inputs)
        return cls.load(out, device=encoder.embedder.mean.device)

    @classmethod
    def from_captions(
        cls,
        code_paths: list[str | Path],
        captions: str | Path,
        codebook_sha256: str,
        model: str = "the model",
        caption_field: str = "caption",
        exclude: str | Path | None = None,
    ) -> "ImageLevelIndex":
        """The mini world's caption index of a tokenised corpus: code shards (arrag tokenise) whose image ids are
        lines of the JSONL `captions` (one record per source image), each image found by its caption's bag of
        words; without the images the exclusion list `exclude` names. Refuses shards tokenised with another
        codebook than `model`'s (fingerprint `codebook_sha256`)."""
        from arrag.data.code_shards import load_code_shards, require_codebook, shard_digests
        from arrag.data.contamination import kept_rows

        records = read_jsonl(captions)
        codes, image_ids, metas = load_code_shards(code_paths)
        keep = torch.from_numpy(kept_rows(exclude, image_ids, metas))
        codes, image_ids = codes[keep], image_ids[keep]
        if int(image_ids.max()) >= len(records):
            raise ValueError(
                f"{captions} has {len(records)} records but the code shards hold image id {image_ids.max()}: "
                "give the metadata of the split the shards were tokenised from"
            )
        try:
            texts = [records[i][caption_field] for i in image_ids.tolist()]
        except KeyError:
            raise ValueError(f"{captions}: records lack the field {caption_field!r} (--caption-field)") from None
        require_codebook(code_paths, metas, codebook_sha256, model)
        return cls.build(
            texts,
            codes.numpy(),
            image_ids.numpy(),
            BagOfWordsEncoder.from_captions(texts),
            codebook_sha256,
            tokenizer_id=metas[0].get("tokenizer_id", ""),
            code_shards=shard_digests(metas),
        )

    def __len__(self) -> int:
        return len(self.codes)

    def to(self, device: str | torch.device) -> "ImageLevelIndex":
        """Encode queries on `device` (a CLIP text tower moves there; the bag of words has nothing to move)."""
        if hasattr(self.encoder, "to"):
            self.encoder.to(device)
        return self

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.codes.shape[1:])

    def search(
        self, queries: np.ndarray, k: int = 1, device: str | torch.device = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, E] (L2-normalised) -> cosine scores and rows [Q, k], best first (ties: lowest row)."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be between 1 and the index size {len(self)}")
        device = torch.device(device)
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32), device=device)  # [Q, E]
        best_scores = q.new_empty((len(q), 0))
        best_rows = torch.empty((len(q), 0), dtype=torch.long, device=device)
        for start, block in self._blocks(device):  # [b, E] float32
            scores = q @ block.T  # [Q, b]
            rows = torch.arange(start, start + len(block), device=device).expand_as(scores)
            # the running best (lower rows) first, so a stable sort gives ties to the lowest row
            scores, rows = torch.cat([best_scores, scores], 1), torch.cat([best_rows, rows], 1)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
            best_scores, best_rows = scores.gather(1, order), rows.gather(1, order)
        return best_scores.cpu().numpy(), best_rows.cpu().numpy()

    def _blocks(self, device: torch.device):
        """(first row, embeddings [b, E] float32) block by block on `device`. On a GPU the whole matrix is copied
        there once and kept (9.2 GB of float16 for the paper's 9M images), so a search reads no host memory;
        on the CPU each block is read from the memory-mapped file, which the jobs of a machine share."""
        if _keeps_resident(device):
            if device not in self.resident:
                stored = torch.empty(self.embeddings.shape, dtype=_torch_dtype(self.embeddings.dtype), device=device)
                for start in range(0, len(self), ROW_BLOCK):  # block by block: no second host copy
                    stored[start : start + ROW_BLOCK] = torch.from_numpy(
                        np.array(self.embeddings[start : start + ROW_BLOCK])
                    )
                self.resident[device] = stored
            for start in range(0, len(self), ROW_BLOCK):
                yield start, self.resident[device][start : start + ROW_BLOCK].float()
            return
        for start in range(0, len(self), ROW_BLOCK):
            yield start, torch.from_numpy(np.array(self.embeddings[start : start + ROW_BLOCK], dtype=np.float32))

    def retrieve(self, prompts: list[str], device: str | torch.device = "cpu") -> np.ndarray:
        """The row of the top-1 image per prompt [Q]."""
        rows = []
        for start in range(0, len(prompts), QUERY_BLOCK):
            block = prompts[start : start + QUERY_BLOCK]
            queries = self.encoder(block)
            empty = np.flatnonzero(~queries.any(axis=1))
            if len(empty):  # an all-zero query would silently "retrieve" row 0
                raise ValueError(
                    f"prompt {block[empty[0]]!r} shares no word with the image index's captions; rebuild the index "
                    "from a corpus whose captions cover the prompts' vocabulary"
                )
            rows.append(self.search(queries, 1, device)[1][:, 0])
        return np.concatenate(rows)

    def reference_codes(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Token grids of the given rows, flattened in raster order: [Q, H*W] long."""
        return torch.from_numpy(np.asarray(self.codes[rows]).astype(np.int64)).flatten(1).to(device)

    def check_codebook(self, codebook_sha256: str, what: str = "the model") -> None:
        if codebook_sha256 != self.codebook_sha256:
            raise ValueError(
                f"the image index was tokenised with another VQ codebook than {what} "
                f"({self.codebook_sha256[:12]} vs {codebook_sha256[:12]}); rebuild it with `arrag build-image-index` "
                "from code shards of this model"
            )

    @property
    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "encoder": self.encoder.describe(),
            "count": len(self),
            "grid": list(self.grid),
            "codebook_sha256": self.codebook_sha256,
            "tokenizer_id": self.tokenizer_id,
            "sources": self.sources,
        }

    def save(self, directory: str | Path) -> None:
        with atomic_path(Path(directory), directory=True) as tmp:
            np.save(tmp / "embeddings.npy", np.asarray(self.embeddings))
            np.save(tmp / "image_ids.npy", self.image_ids)
            np.save(tmp / "codes.npy", np.asarray(self.codes))
            write_json(tmp / "index.json", self.metadata)
            inputs = {"codebook_sha256": self.codebook_sha256, **self.built_from}
            self.identity = write_manifest(tmp, "image-index", inputs)["digest"]

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ImageLevelIndex":
        """Open an index (its arrays memory-mapped) after checking it against its manifest (arrag.manifest);
        the query encoder is rebuilt on `device`."""
        directory = Path(directory)
        fix = "build the image index with `arrag build-image-index`"
        meta, manifest = read_artefact_metadata(directory, "index.json", "image-index", FORMAT, fix)
        arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in ("embeddings", "image_ids", "codes")}
        index = cls(
            arrays["embeddings"],
            arrays["image_ids"],
            arrays["codes"],
            encoder_from(meta["encoder"], device),
            meta["codebook_sha256"],
            meta.get("tokenizer_id", ""),
            meta.get("sources"),
        )
        if len(index) != meta["count"]:
            raise ValueError(f"{directory}: the arrays hold {len(index)} images, index.json says {meta['count']}")
        index.built_from = {k: v for k, v in manifest["inputs"].items() if k != "codebook_sha256"}
        index.identity = manifest["digest"]
        return index
