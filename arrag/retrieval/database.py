"""The patch-level retrieval database (paper section 3.1): neighbourhood key -> the patch's own token.

Entries are stored in raster order per image, so an entry's label e determines its image (e // (H*W)),
row and column: the database keeps only the token grid (the values, 2 B per entry for K <= 65536) and
one int64 image id per image (the provenance, 8/(H*W) B per entry) beside the key index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from arrag.io import atomic_path, write_json
from arrag.manifest import read_artefact_metadata, write_manifest
from arrag.retrieval.backends import BACKENDS, make_backend
from arrag.retrieval.keys import check_codebook, check_codes, extended_codebook, neighbour_offsets, neighbourhood_ids

log = logging.getLogger(__name__)

FORMAT = "arrag-patchdb/1"
CHUNK_ENTRIES = 1 << 18  # entries whose neighbour ids are computed and indexed at once


def codebook_sha256(codebook: torch.Tensor) -> str:
    # imported here: arrag.models pulls in transformers, which the retrieval library does not otherwise need
    from arrag.models.vq import codebook_fingerprint

    return codebook_fingerprint(codebook)


def take_tokens(codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """codes[index] as int64. uint16 ids are gathered through their int16 view (the same bits: CUDA has no
    uint16 indexing) and masked back to 0..65535."""
    if codes.dtype == torch.uint16:
        return codes.view(torch.int16)[index].long() & 0xFFFF
    return codes[index].long()


def code_dtype(num_codes: int) -> torch.dtype:
    """Smallest dtype holding token ids 0..K-1: uint16 up to K = 65536."""
    return torch.uint16 if num_codes <= 1 << 16 else torch.int32


class PatchDatabase:
    """Neighbourhood keys of every patch of a corpus of token grids, searchable by squared L2."""

    def __init__(
        self,
        codebook: torch.Tensor,
        grid: tuple[int, int],
        hops: int = 1,
        causal: bool = True,
        index: str = "compact",
        tokenizer_id: str = "",
        device: str = "cpu",
        **index_params,
    ):
        check_codebook(codebook)
        self.codebook = codebook.detach().to("cpu", torch.float32)  # [K, D], the L2-normalised VQ codebook
        self.codebook_sha256 = codebook_sha256(self.codebook)
        self.hops, self.causal, self.grid = hops, causal, (int(grid[0]), int(grid[1]))
        self.num_neighbours = len(neighbour_offsets(hops, causal))
        self.tokenizer_id, self.device = tokenizer_id, device
        self.backend = make_backend(
            index, extended_codebook(self.codebook), self.num_neighbours, device, **index_params
        )
        self.index_name = index
        positions = self.grid[0] * self.grid[1]
        # the token grids [N, H*W] in their stored dtype and the image ids [N], each as a list of the parts
        # added so far (joined once, when first read: adding shard by shard never copies what is there)
        self._codes = [torch.empty(0, positions, dtype=code_dtype(len(self.codebook)), device=device)]
        self._image_ids = [torch.empty(0, dtype=torch.long, device=device)]
        self.mapped_from: Path | None = None  # the directory whose files a memory-mapped database reads
        self.sources: list[dict] = []  # [{"source": spec, "offset": first image id}], when built from code shards
        self.code_shards: list[str] = []  # the digests of the code shards it was built from (their manifests)
        self.identity = ""  # the digest of its manifest once saved or loaded: what FAiD records

    @property
    def codes(self) -> torch.Tensor:
        """[N, H*W] token ids, uint16 for K <= 65536 (int32 beyond)."""
        if len(self._codes) > 1:
            self._codes = [torch.cat(self._codes)]
        return self._codes[0]

    @property
    def image_ids(self) -> torch.Tensor:
        """[N] int64, the image id of each grid."""
        if len(self._image_ids) > 1:
            self._image_ids = [torch.cat(self._image_ids)]
        return self._image_ids[0]

    @classmethod
    def build(
        cls,
        codes: torch.Tensor,
        codebook: torch.Tensor,
        hops: int = 1,
        causal: bool = True,
        index: str = "compact",
        image_ids: torch.Tensor | None = None,
        tokenizer_id: str = "",
        device: str = "cpu",
        sources: list[dict] | None = None,
        code_shards: list[str] | None = None,
        **index_params,
    ) -> "PatchDatabase":
        """Index every position of codes [N, H, W] (edges included); image_ids [N] default to 0..N-1.
        `sources`: which image source each id range came from (arrag.data.code_shards.source_table), kept in
        the metadata so a hit's image id leads back to its image; `code_shards`: the shards' digests, recorded in
        the manifest as what the database was built from."""
        codes = torch.as_tensor(codes)
        check_codes(codes, codebook.shape[0] if codebook.ndim == 2 else None)
        db = cls(codebook, tuple(codes.shape[1:]), hops, causal, index, tokenizer_id, device, **index_params)
        db.sources = list(sources or [])
        db.code_shards = list(code_shards or [])
        db.add(codes, image_ids)
        return db

    @classmethod
    def from_code_shards(
        cls, paths: list, codebook: torch.Tensor, exclude: str | Path | None = None, model: str = "", **kwargs
    ) -> "PatchDatabase":
        """`build` over code shards (arrag.data.code_shards), read and indexed one shard at a time in their
        stored dtype: the job holds the index and the uint16 grids, never the corpus as int64. The index is
        trained on the first shard; `kwargs` as for `build` (image ids, tokenizer, sources and the shards'
        digests come from the shards). Refuses shards of another codebook than `codebook` (`model` names its
        owner in the message); `exclude`: an exclusion list (arrag contamination) whose images are left out,
        the others keeping their ids, so provenance holds."""
        from arrag.data.code_shards import iter_code_shards, require_codebook, shard_digests, source_table
        from arrag.data.contamination import Exclusions

        exclusions = Exclusions.load(exclude) if exclude else None
        fingerprint, db, metas = codebook_sha256(codebook), None, []
        for path, (codes, image_ids, meta) in zip(paths, iter_code_shards(paths)):
            require_codebook([path], [meta], fingerprint, model or "the codebook given")
            if exclusions is not None:
                keep = exclusions.keep(image_ids, [meta])
                if not keep.all():
                    log.warning(
                        "%s: left out %d of %d images, benchmark copies (%s)", path, (~keep).sum(), len(keep), exclude
                    )
                codes, image_ids = codes[keep], image_ids[keep]
            codes, image_ids = torch.from_numpy(codes), torch.from_numpy(image_ids)  # [n, H, W] uint16 or int32
            if db is None:
                db = cls.build(
                    codes, codebook, image_ids=image_ids, tokenizer_id=meta.get("tokenizer_id", ""), **kwargs
                )
            else:
                db.add(codes, image_ids)
            metas.append(meta)
        db.sources, db.code_shards = source_table(metas), shard_digests(metas)
        return db

    # ---- adding -------------------------------------------------------------------------------------

    def add(self, codes: torch.Tensor, image_ids: torch.Tensor | None = None) -> int:
        """Append a shard codes [N, H, W] (image_ids [N], default continuing the numbering); returns entries added."""
        if self.mapped_from is not None:
            raise ValueError(
                f"this database reads {self.mapped_from} memory-mapped (read-only); to add entries open it with "
                "PatchDatabase.load(..., mmap=False)"
            )
        codes = torch.as_tensor(codes)
        check_codes(codes, len(self.codebook))
        if tuple(codes.shape[1:]) != self.grid:
            raise ValueError(
                f"codes grid {tuple(codes.shape[1:])} differs from the database's {self.grid}: "
                "tokenise with the same tokenizer and image size, or build a separate database"
            )
        if len(codes) == 0:
            log.warning("PatchDatabase.add: a shard of zero images, nothing added")
            return 0
        image_ids = self._new_image_ids(len(codes), image_ids)
        if not self.backend.is_trained:
            entries = len(codes) * self.positions
            self.backend.train(self._training_sample(codes, self.backend.training_size(entries)))
        for ids in self._neighbour_chunks(codes):
            self.backend.add(ids)
        self._append(codes, image_ids)
        return len(codes) * self.positions

    def _new_image_ids(self, num_images: int, image_ids: torch.Tensor | None) -> torch.Tensor:
        if image_ids is None:
            start = len(self.image_ids)
            return torch.arange(start, start + num_images)
        image_ids = torch.as_tensor(image_ids)
        if image_ids.shape != (num_images,) or image_ids.dtype.is_floating_point:
            raise ValueError(
                f"image_ids must be integers of shape [{num_images}] (one per image), "
                f"got {image_ids.dtype} {tuple(image_ids.shape)}"
            )
        return image_ids.long()

    def _append(self, codes: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Keep codes [N, H, W] (as [N, H*W] in the stored dtype) and image_ids [N]. A memory-mapped tensor on
        the CPU stays mapped (no copy); on a GPU it is copied there and the host keeps nothing."""
        dtype = self._codes[0].dtype
        flat = codes.reshape(len(codes), -1)
        if flat.dtype != dtype:  # e.g. int64 from load_code_shards; uint16 has no direct cast from every dtype
            flat = flat.to(torch.int32).to(dtype)
        self._codes.append(flat.to(self.device))
        self._image_ids.append(image_ids.to(self.device, torch.long))

    def _neighbour_chunks(self, codes: torch.Tensor) -> Iterator[np.ndarray]:
        """Neighbour ids [e, n] of the shard's entries, in label order, a few images at a time."""
        images = max(1, CHUNK_ENTRIES // self.positions)
        for start in range(0, len(codes), images):
            ids = neighbourhood_ids(codes[start : start + images], self.hops, self.causal, pad_id=len(self.codebook))
            yield ids.reshape(-1, self.num_neighbours).cpu().numpy()

    def _training_sample(self, codes: torch.Tensor, size: int, seed: int = 0) -> np.ndarray:
        """Neighbour ids [size, n] of entries drawn uniformly from the shard (deterministic)."""
        entries = len(codes) * self.positions
        if size == 0:  # nothing to train (flat, compact)
            return np.empty((0, self.num_neighbours), dtype=np.int64)
        picks = torch.randperm(entries, generator=torch.Generator().manual_seed(seed))[:size].sort().values.numpy()
        parts, start = [], 0
        for ids in self._neighbour_chunks(codes):
            inside = picks[(picks >= start) & (picks < start + len(ids))]
            parts.append(ids[inside - start])
            start += len(ids)
        return np.concatenate(parts)

    # ---- searching ----------------------------------------------------------------------------------

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """queries [Q, n*D] -> sq_dists [Q, k] float32 ascending, values [Q, k] long, sources [Q, k, 3] long.

        values are the token at each hit's centre; sources its (image id, row, column). A hit an IVF search
        could not fill (fewer than k entries in the probed lists) has value -1, sources -1, distance inf.
        Results are on the queries' device.
        """
        queries = torch.as_tensor(queries)
        self._check_search(queries, k)
        dists, labels = self.backend.search(queries, k)  # [Q, k] each, labels -1 when missing
        labels = labels.to(self.codes.device)
        found = labels >= 0
        safe = labels.clamp(min=0)
        values = take_tokens(self.codes.reshape(-1), safe)  # [Q, k] long
        position = safe % self.positions
        sources = torch.stack(
            [self.image_ids[safe // self.positions], position // self.grid[1], position % self.grid[1]], -1
        )
        dists = torch.where(found, dists.to(labels.device, torch.float32), torch.inf)
        values = torch.where(found, values, -1)
        sources = torch.where(found[..., None], sources, -1)
        return dists.to(queries.device), values.to(queries.device), sources.to(queries.device)

    def _check_search(self, queries: torch.Tensor, k: int) -> None:
        width = self.num_neighbours * self.codebook.shape[1]
        if queries.ndim != 2 or queries.shape[1] != width or not queries.is_floating_point():
            layout = f"{'causal' if self.causal else 'full'} {self.hops}-hop"
            raise ValueError(
                f"queries must be float [Q, {width}]: {self.num_neighbours} neighbours ({layout} keys) x "
                f"D={self.codebook.shape[1]} codebook dims; got {queries.dtype} {tuple(queries.shape)}. "
                "Build them with arrag.retrieval.query_from_grid using the database's hops and causal"
            )
        if not isinstance(k, int) or not 1 <= k <= len(self):
            raise ValueError(f"k must be an integer in [1, {len(self)}] (the number of entries), got {k!r}")

    def set_search_params(self, **params) -> None:
        """Change search-time parameters of the index, e.g. nprobe=16 for IVF indexes."""
        self.backend.set_search_params(**params)

    # ---- description --------------------------------------------------------------------------------

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_images(self) -> int:
        return sum(len(part) for part in self._codes)  # without joining the parts

    def __len__(self) -> int:
        return self.num_images * self.positions

    def bytes_per_entry(self) -> dict[str, float]:
        """In-memory bytes per entry, read from the storage itself (fixed costs such as centroids excluded)."""
        return {
            "keys": self.backend.key_bytes(),
            "list_ids": self.backend.list_id_bytes(),  # int64 labels in IVF inverted lists, 0 otherwise
            "values": float(self._codes[0].element_size()),
            "provenance": self.image_ids.element_size() / self.positions,
        }

    @property
    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "codebook_sha256": self.codebook_sha256,
            "codebook_size": int(self.codebook.shape[0]),
            "codebook_dim": int(self.codebook.shape[1]),
            "hops": self.hops,
            "causal": self.causal,
            "grid": list(self.grid),
            "tokenizer_id": self.tokenizer_id,
            "index": self.index_name,
            "index_params": {k: v for k, v in self.backend.params.items() if k not in self.backend.runtime_params},
            "ntotal": len(self),
            "num_images": self.num_images,
            "sources": self.sources,
        }

    # ---- persistence --------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write metadata.json, codes.npy [N, H, W], image_ids.npy [N] and the index file, atomically, and the
        manifest last (arrag.manifest), recording the codebook and code shards the database was built from."""
        with atomic_path(directory, directory=True) as tmp:
            _save_parts(tmp / "codes.npy", self._codes, self.grid)  # [N, H, W], the stored dtype
            _save_parts(tmp / "image_ids.npy", self._image_ids, ())  # [N] int64
            if self.backend.saves_index:
                self.backend.save(tmp)
            write_json(tmp / "metadata.json", self.metadata)
            inputs = {"codebook_sha256": self.codebook_sha256, "code_shards": self.code_shards}
            self.identity = write_manifest(tmp, "patch-database", inputs)["digest"]

    @classmethod
    def load(
        cls,
        directory: str | Path,
        codebook: torch.Tensor,
        device: str = "cpu",
        hops: int | None = None,
        causal: bool | None = None,
        mmap: bool = True,
    ) -> "PatchDatabase":
        """Open a saved database after checking it against its manifest (arrag.manifest.verify: a damaged or
        incomplete file is named); refuses another codebook, another format version, or (when given) another
        key layout (`hops`, `causal`).

        mmap=True (the default, for searching): the index and the token grids are memory-mapped, not read, so a
        job holds no private copy and the jobs of one machine share one copy in the page cache; such a
        database is read-only (`add` refuses). On a GPU device the grids (and torch_compact's ids) are copied
        to the device and the host keeps only what FAISS keeps. mmap=False reads everything into memory."""
        directory = Path(directory)
        path = directory / "metadata.json"
        fix = "build it with `arrag build-db`"
        meta, manifest = read_artefact_metadata(directory, "metadata.json", "patch-database", FORMAT, fix)
        check_codebook(codebook)
        expected = {
            "codebook_size": int(codebook.shape[0]),
            "codebook_dim": int(codebook.shape[1]),
            "codebook_sha256": codebook_sha256(codebook),
        }
        expected.update({k: v for k, v in (("hops", hops), ("causal", causal)) if v is not None})
        for field, value in expected.items():
            if meta.get(field) != value:
                hint = {
                    "hops": "build a database with this key layout",
                    "causal": "build a database with this key layout",
                }.get(field, "pass the codebook it was built from")
                raise ValueError(
                    f"{path}: field {field!r} differs: expected {value!r} (this arrag and the codebook passed), "
                    f"found {meta.get(field)!r} (stored); {hint}"
                )
        if meta["index"] not in BACKENDS:
            raise ValueError(f"{path}: unknown index {meta['index']!r}; known indexes: {', '.join(BACKENDS)}")
        db = cls(
            codebook,
            tuple(meta["grid"]),
            meta["hops"],
            meta["causal"],
            meta["index"],
            meta["tokenizer_id"],
            device,
            **meta["index_params"],
        )
        mode = "c" if mmap else None  # copy-on-write: writable for torch, and never written, so always shared
        codes = np.load(directory / "codes.npy", mmap_mode=mode, allow_pickle=False)  # [N, H, W]
        image_ids = np.load(directory / "image_ids.npy", mmap_mode=mode, allow_pickle=False)  # [N]
        stored = torch.from_numpy(np.zeros(0, codes.dtype)).dtype
        if stored != db._codes[0].dtype or codes.shape[1:] != db.grid or image_ids.shape != codes.shape[:1]:
            raise ValueError(
                f"{directory}: codes.npy holds {codes.dtype} {codes.shape} and image_ids.npy {image_ids.shape}; "
                f"expected {db._codes[0].dtype} [N, {db.grid[0]}, {db.grid[1]}] and [N]: rebuild the database"
            )
        codes, image_ids = torch.from_numpy(codes), torch.from_numpy(image_ids)
        if db.backend.saves_index:
            db.backend.load(directory, mmap=mmap)
        else:
            for ids in db._neighbour_chunks(codes):
                db.backend.add(ids)
        db._append(codes, image_ids)
        db._codes, db._image_ids = db._codes[1:], db._image_ids[1:]  # no join with the empty start
        db.mapped_from = directory if mmap else None
        db.sources = meta.get("sources", [])
        db.code_shards, db.identity = manifest["inputs"].get("code_shards", []), manifest["digest"]
        if db.backend.ntotal != len(db) or len(db) != meta["ntotal"]:
            raise ValueError(
                f"{directory}: field 'ntotal' differs: expected {meta['ntotal']} (metadata), found "
                f"{db.backend.ntotal} index entries and {len(db)} code positions; the directory is corrupt"
            )
        return db


def _save_parts(path: Path, parts: list[torch.Tensor], shape: tuple[int, ...]) -> None:
    """Write the rows of several tensors as one .npy of rows reshaped to `shape`, a part at a time (no join)."""
    arrays = [p.cpu().numpy().reshape(-1, *shape) for p in parts]
    rows = sum(len(a) for a in arrays)
    header = {"descr": np.lib.format.dtype_to_descr(arrays[0].dtype), "fortran_order": False, "shape": (rows, *shape)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for a in arrays:
            f.write(np.ascontiguousarray(a).data)
