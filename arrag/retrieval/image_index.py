"""Image-level retrieval for the RA-CM3 baseline (paper appendix B.1): text query -> the most similar
corpus image, whose VQ tokens become the generation prefix.

The paper embeds corpus images and prompts with CLIP and takes the top cosine similarity. The mini world
has no pretrained CLIP, so the mini profile stands in a *caption-similarity* retriever: each corpus image
is represented by its caption's bag of words and the prompt is matched by cosine similarity. It answers
the same question (which corpus image fits this prompt best) with text on both sides. A CLIP encoder for
the paper profile is not built yet.

Directory format "arrag-imageindex/1" (atomic, like every output):

    index.npz    embeddings float32 [N, E] (L2-normalised), image_ids int64 [N], codes uint16 [N, H, W]
    index.json   format, encoder ({"name", "vocabulary"}), count, grid, codebook_sha256, tokenizer_id

Ties (identical bag-of-words captions are common in the mini world) go to the lowest row, so a prompt
always retrieves the same image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from arrag.io import atomic_path, write_json

FORMAT = "arrag-imageindex/1"


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


def encoder_from(description: dict) -> BagOfWordsEncoder:
    if description.get("name") != BagOfWordsEncoder.name:
        raise ValueError(f"unknown image-index encoder {description.get('name')!r}: this build knows 'caption-bow'")
    return BagOfWordsEncoder(description["vocabulary"])


class ImageLevelIndex:
    """Corpus images as (embedding, image id, token grid); `retrieve(prompts)` -> row of the best image."""

    def __init__(
        self,
        embeddings: np.ndarray,
        image_ids: np.ndarray,
        codes: np.ndarray,
        encoder: BagOfWordsEncoder,
        codebook_sha256: str,
        tokenizer_id: str = "",
    ):
        if not (len(embeddings) == len(image_ids) == len(codes)):
            raise ValueError(
                f"image index: {len(embeddings)} embeddings, {len(image_ids)} image ids and {len(codes)} token "
                "grids: give one of each per corpus image"
            )
        if len(codes) == 0:
            raise ValueError("image index: the corpus is empty")
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # [N, E]
        self.image_ids = np.asarray(image_ids, dtype=np.int64)  # [N]
        self.codes = np.asarray(codes)  # [N, H, W]
        self.encoder = encoder
        self.codebook_sha256, self.tokenizer_id = codebook_sha256, tokenizer_id

    @classmethod
    def build(
        cls,
        captions: list[str],
        codes: np.ndarray,
        image_ids: np.ndarray,
        encoder: BagOfWordsEncoder,
        codebook_sha256: str,
        tokenizer_id: str = "",
    ) -> "ImageLevelIndex":
        """captions[i] describes the image with id image_ids[i] and token grid codes[i]."""
        return cls(encoder(captions), image_ids, codes, encoder, codebook_sha256, tokenizer_id)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.codes.shape[1:])

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, E] (L2-normalised) -> cosine scores and rows [Q, k], best first (ties: lowest row)."""
        if not 1 <= k <= len(self):
            raise ValueError(f"k={k} must be between 1 and the index size {len(self)}")
        scores = queries @ self.embeddings.T  # [Q, N]
        rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, rows, axis=1), rows

    def retrieve(self, prompts: list[str]) -> np.ndarray:
        """The row of the top-1 image per prompt [Q]."""
        queries = self.encoder(prompts)
        empty = np.flatnonzero(~queries.any(axis=1))
        if len(empty):  # an all-zero query would silently "retrieve" row 0
            raise ValueError(
                f"prompt {prompts[empty[0]]!r} shares no word with the image index's captions; rebuild the index "
                "from a corpus whose captions cover the prompts' vocabulary"
            )
        return self.search(queries, 1)[1][:, 0]

    def reference_codes(self, rows: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Token grids of the given rows, flattened in raster order: [Q, H*W] long."""
        return torch.from_numpy(self.codes[rows].astype(np.int64)).flatten(1).to(device)

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
        }

    def save(self, directory: str | Path) -> None:
        with atomic_path(Path(directory), directory=True) as tmp:
            with open(tmp / "index.npz", "wb") as f:  # a file object: np.savez would append ".npz"
                np.savez(f, embeddings=self.embeddings, image_ids=self.image_ids, codes=self.codes)
            write_json(tmp / "index.json", self.metadata)

    @classmethod
    def load(cls, directory: str | Path) -> "ImageLevelIndex":
        directory = Path(directory)
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} is missing: build the image index with `arrag build-image-index`")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}; rebuild the index")
        with np.load(directory / "index.npz", allow_pickle=False) as z:
            index = cls(
                z["embeddings"],
                z["image_ids"],
                z["codes"],
                encoder_from(meta["encoder"]),
                meta["codebook_sha256"],
                meta.get("tokenizer_id", ""),
            )
        if len(index) != meta["count"]:
            raise ValueError(f"{directory}: index.npz holds {len(index)} images, index.json says {meta['count']}")
        return index
