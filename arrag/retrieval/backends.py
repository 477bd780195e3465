"""Index backends of the PatchDatabase: how the keys are stored and searched.

Every backend receives its entries as neighbour ids into the extended codebook (the VQ codebook plus a
zero row for neighbours off the grid), ids [E, n] in label order, so the key of an entry is
ext[ids].flatten(). The float backends (flat, ivf_*, opq_ivf_pq) materialise those keys for FAISS; the
compact ones never do: a key is n codebook rows, so a product quantizer whose n sub-codebooks are all the
extended codebook stores it exactly as n token ids, and asymmetric distance computation (ADC) returns the
exact squared L2 distance to it.

| name          | structure                                  | exact | key bytes per entry          |
|---------------|--------------------------------------------|-------|------------------------------|
| flat          | IndexFlatL2                                | yes   | 4 n D                        |
| ivf_flat      | IVF{nlist},Flat                            | no    | 4 n D (+ 8: label in list)   |
| ivf_pq        | IVF{nlist},PQ{m}x{nbits}                   | no    | m nbits / 8 (+ 8)            |
| opq_ivf_pq    | OPQ{m},IVF{nlist},PQ{m} (authors' config)  | no    | m (+ 8)                      |
| compact       | IndexPQ, fixed centroids, codes from ids   | yes   | ceil(n ceil(log2(K+1)) / 8)  |
| ivf_compact   | IVFPQ (not residual) over the same codes   | no*   | ceil(n ceil(log2(K+1)) / 8) (+ 8) |
| torch_compact | ids on the device, lookup-table ADC        | yes   | 2 n (4 n when K >= 32768)    |

(*) exact distances, only the list pruning is approximate: nprobe = nlist is exact search.

torch_compact shards across devices (`devices="cuda:0,cuda:1"`): its pieces of entries are spread over the
devices, each device scores its own pieces against the query's lookup tables, and the devices' top-k lists
are merged on the database's device. A runtime choice, not saved with the database.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)

ADD_CHUNK = 1 << 18  # entries whose float keys are materialised at once


def keys_from_ids(ext: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ext [K+1, D] float32, ids [E, n] -> keys [E, n*D] float32, C-contiguous for FAISS."""
    return np.ascontiguousarray(ext[ids].reshape(len(ids), -1), dtype=np.float32)


def compact_nbits(num_codes: int) -> int:
    """Bits per neighbour id of the exact compact codes: ids 0..K (K = the zero row) need ceil(log2(K+1))."""
    return max(1, int(num_codes).bit_length())  # bit_length(K) == ceil(log2(K+1)) for K >= 1


def compact_centroids(ext: np.ndarray, n: int, nbits: int) -> np.ndarray:
    """PQ centroids [n, 2^nbits, D]: every sub-codebook is the extended codebook.

    Slots past K+1 are filled with far-away rows: no key uses them and no encoder would ever pick them.
    """
    slots, dim = 1 << nbits, ext.shape[1]
    far = 1e3 * (1.0 + float(np.abs(ext).max()))
    table = np.full((slots, dim), far, dtype=np.float32)
    table[: len(ext)] = ext
    return np.ascontiguousarray(np.broadcast_to(table, (n, slots, dim)))


def pack_codes(ids: np.ndarray, nbits: int) -> np.ndarray:
    """ids [E, n] -> PQ codes [E, ceil(n*nbits/8)] uint8, hand-written since FAISS only encodes floats.

    FAISS's PQ layout (PQEncoderGeneric): sub-quantizer j's index occupies bits j*nbits .. (j+1)*nbits-1
    of a little-endian bit stream (least significant bit first), the last byte zero-padded.
    """
    ids = np.asarray(ids, dtype=np.int32)  # nbits <= 24 (FAISS's limit), and int32 halves the temporary
    bits = (ids[:, :, None] >> np.arange(nbits, dtype=np.int32)) & 1  # [E, n, nbits], least significant first
    return np.packbits(bits.reshape(len(ids), -1).astype(np.uint8), axis=1, bitorder="little")


def default_nlist(num_entries: int) -> int:
    """About 4 sqrt(entries) lists, but at least 39 training keys per list (FAISS k-means' minimum)."""
    return int(max(1, min(4 * math.sqrt(num_entries), num_entries // 39, 65536)))


class Backend:
    """Stores keys given as neighbour ids [E, n] (labels 0, 1, ... in arrival order) and searches them."""

    name = ""
    build_params: dict = {}  # every accepted parameter and its default (None = resolved from the data)
    search_params: tuple[str, ...] = ()  # the ones set_search_params may change later
    runtime_params: tuple[str, ...] = ()  # set where the database is used, never saved with it (devices)
    saves_index = True  # False: rebuilt from the database's codes on load

    def __init__(self, ext: torch.Tensor, n: int, device: str = "cpu", **params):
        unknown = sorted(set(params) - set(self.build_params))
        if unknown:
            known = ", ".join(sorted(self.build_params)) or "none"
            raise ValueError(f"unknown parameter(s) {unknown} for index {self.name!r}; it accepts: {known}")
        self.params = {**self.build_params, **params}
        self.ext = ext.detach().to("cpu", torch.float32)  # [K+1, D]
        self.n, self.device = n, device
        self.dim = n * self.ext.shape[1]

    @property
    def num_codes(self) -> int:  # K, the codebook size; id K is the zero row
        return self.ext.shape[0] - 1

    @property
    def is_trained(self) -> bool:
        return True

    def training_size(self, num_entries: int) -> int:
        """Keys to train on, given the first shard's size; resolves data-dependent defaults (nlist)."""
        return 0

    def train(self, ids: np.ndarray) -> None:
        pass

    def set_search_params(self, **params) -> None:
        unknown = sorted(set(params) - set(self.search_params))
        if unknown:
            known = ", ".join(self.search_params) or "none"
            raise ValueError(f"unknown search parameter(s) {unknown} for index {self.name!r}; it accepts: {known}")
        self.params.update(params)
        self._apply_search_params()

    def _apply_search_params(self) -> None:
        pass

    # the rest is per backend: add(ids [E, n]), search(queries [Q, n*D], k) -> (sq_dists [Q, k] float32,
    # labels [Q, k] long, -1 where fewer than k entries were scanned), ntotal, key_bytes(), save(dir), load(dir)


class FaissBackend(Backend):
    """A FAISS index kept on the CPU (the truth that is saved) with an optional GPU copy for search."""

    factory = ""  # faiss.index_factory string, formatted with self.params
    # the read flag that memory-maps this index's codes (faiss 1.15): IO_FLAG_MMAP_IFC for flat code arrays
    # (IndexFlat, IndexPQ), IO_FLAG_MMAP for the inverted lists of an IVF; each refuses or ignores the other kind
    mmap_flag = faiss.IO_FLAG_MMAP_IFC

    def __init__(self, ext, n, device="cpu", **params):
        super().__init__(ext, n, device, **params)
        self.index: faiss.Index | None = None
        self._gpu = None  # (resources, index) when searching on a GPU

    @property
    def is_trained(self) -> bool:
        return self.index is not None

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def train(self, ids: np.ndarray) -> None:
        self.index = self._create(ids)
        self._apply_search_params()

    def _create(self, ids: np.ndarray) -> faiss.Index:
        index = faiss.index_factory(self.dim, self.factory.format(**self.params))
        if not index.is_trained:
            index.train(keys_from_ids(self.ext.numpy(), ids))
        return index

    def add(self, ids: np.ndarray) -> None:
        ext = self.ext.numpy()
        for start in range(0, len(ids), ADD_CHUNK):
            self.index.add(keys_from_ids(ext, ids[start : start + ADD_CHUNK]))
        self._gpu = None  # the GPU copy is stale

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Equal queries are searched once: equal neighbourhoods are common (a plain background, a shape's inside),
        # and an IVF search scans a list of thousands of equal keys in full for each copy. Here, where the queries
        # come to the host anyway; torch_compact on a GPU would pay a device sync for it every step.
        unique, inverse = torch.unique(queries.detach().to("cpu", torch.float32), dim=0, return_inverse=True)
        dists, labels = self._searcher().search(np.ascontiguousarray(unique.numpy()), k)  # [U, k] each
        return torch.from_numpy(dists)[inverse], torch.from_numpy(labels)[inverse]  # [Q, k]

    def _searcher(self) -> faiss.Index:
        """The CPU index, or a GPU copy of it when the database lives on cuda and FAISS has GPUs."""
        if not str(self.device).startswith("cuda") or faiss.get_num_gpus() == 0:
            return self.index
        if self._gpu is None:
            try:
                res = faiss.StandardGpuResources()
                gpu = faiss.index_cpu_to_gpu(res, torch.device(self.device).index or 0, self.index)
                self._gpu = (res, gpu)  # the resources must outlive the index
            except RuntimeError as err:  # e.g. PQ codes of other than 8 bits have no GPU kernel
                log.warning("index %s stays on the CPU: %s", self.name, err)
                self._gpu = (None, self.index)
        return self._gpu[1]

    def _apply_search_params(self) -> None:
        if self.index is not None and "nprobe" in self.params:
            # extract_index_ivf reaches the IVF inside an OPQ pre-transform (the anchor's nprobe never did)
            faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        self._gpu = None  # a GPU copy takes nprobe from the CPU index when it is made

    def set_search_params(self, **params) -> None:
        if "nprobe" in params and int(params["nprobe"]) < 1:
            raise ValueError(f"nprobe must be >= 1, got {params['nprobe']}")
        super().set_search_params(**params)

    def key_bytes(self) -> float:
        """Bytes stored per entry for its key code (the int64 list label of IVF indexes: `list_id_bytes`)."""
        if self.index is None:
            return float("nan")
        ivf = faiss.try_extract_index_ivf(self.index)
        return float(self.index.sa_code_size() if ivf is None else ivf.code_size)

    def list_id_bytes(self) -> float:
        """Bytes per entry an IVF keeps beside each code in its inverted list: the entry's int64 label."""
        if self.index is None or faiss.try_extract_index_ivf(self.index) is None:
            return 0.0
        return float(np.dtype(np.int64).itemsize)

    def save(self, directory: Path) -> None:
        faiss.write_index(self.index, str(directory / "index.faiss"))

    def load(self, directory: Path, mmap: bool = False) -> None:
        """Read index.faiss; mmap=True maps it instead (read-only: FAISS aborts the process on an add)."""
        self.index = faiss.read_index(str(directory / "index.faiss"), self.mmap_flag if mmap else 0)
        self._apply_search_params()


class IVFBackend(FaissBackend):
    """FAISS IVF indexes: the coarse quantizer (and PQ) are trained on a sample of the first shard's keys."""

    mmap_flag = faiss.IO_FLAG_MMAP

    def training_size(self, num_entries: int) -> int:
        if self.params["nlist"] is None:
            self.params["nlist"] = default_nlist(num_entries)
        nlist = int(self.params["nlist"])
        if num_entries < nlist:
            raise ValueError(
                f"index {self.name!r} with nlist={nlist} needs at least {nlist} keys to train on, the first "
                f"shard has {num_entries}: build from a larger shard or pass a smaller nlist"
            )
        if self.params["nprobe"] is None:
            self.params["nprobe"] = min(16, nlist)
        size = self.params["train_size"] or max(65536, 64 * nlist)
        return min(num_entries, int(size))


class Flat(FaissBackend):
    name, factory = "flat", "Flat"


class IVFFlat(IVFBackend):
    name, factory = "ivf_flat", "IVF{nlist},Flat"
    build_params = {"nlist": None, "nprobe": None, "train_size": None}
    search_params = ("nprobe",)


class IVFPQ(IVFBackend):
    name, factory = "ivf_pq", "IVF{nlist},PQ{m}x{nbits}"
    build_params = {"nlist": None, "m": None, "nbits": 8, "nprobe": None, "train_size": None}
    search_params = ("nprobe",)

    def training_size(self, num_entries: int) -> int:
        if self.params["m"] is None:
            self.params["m"] = self.n  # one sub-quantizer per neighbour
        if self.dim % int(self.params["m"]):
            raise ValueError(f"ivf_pq: m={self.params['m']} must divide the key width {self.dim}")
        return super().training_size(num_entries)


class OPQIVFPQ(IVFBackend):
    """The authors' configuration as a baseline: OPQ(m) rotation, IVF(nlist), PQ(m x 8 bits), nprobe 1.

    When the key width d is not a multiple of m, OPQ outputs d' = ceil(d/m) m dimensions ("OPQ{m}_{d'}"),
    so the PQ sub-vectors are whole.
    """

    name = "opq_ivf_pq"
    build_params = {"m": 8, "nlist": 800, "nprobe": 1, "train_size": None}
    search_params = ("nprobe",)

    @property
    def factory(self) -> str:
        m = int(self.params["m"])
        width = -(-self.dim // m) * m
        opq = f"OPQ{m}" if width == self.dim else f"OPQ{m}_{width}"
        return opq + ",IVF{nlist},PQ{m}"


class Compact(FaissBackend):
    """Exact compact keys: IndexPQ whose n sub-codebooks are the extended codebook, codes written from ids."""

    name = "compact"

    @property
    def nbits(self) -> int:
        return compact_nbits(self.num_codes)

    def _create(self, ids: np.ndarray) -> faiss.Index:
        index = faiss.IndexPQ(self.dim, self.n, self.nbits)
        self._set_centroids(index.pq)
        index.is_trained = True
        return index

    def _set_centroids(self, pq: faiss.ProductQuantizer) -> None:
        centroids = compact_centroids(self.ext.numpy(), self.n, self.nbits)  # [n, 2^nbits, D]
        faiss.copy_array_to_vector(centroids.ravel(), pq.centroids)

    def add(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), ADD_CHUNK):  # appended in order: labels ntotal, ntotal+1, ...
            self.index.add_sa_codes(pack_codes(ids[start : start + ADD_CHUNK], self.nbits))
        self._gpu = None


class IVFCompact(Compact):
    """The exact compact codes in the inverted lists of an IVF (not residual), so only list pruning is approximate."""

    name = "ivf_compact"
    mmap_flag = faiss.IO_FLAG_MMAP
    build_params = {"nlist": None, "nprobe": None, "train_size": None}
    search_params = ("nprobe",)
    training_size = IVFBackend.training_size

    def _create(self, ids: np.ndarray) -> faiss.Index:
        nlist = int(self.params["nlist"])
        kmeans = faiss.Kmeans(self.dim, nlist, niter=20, seed=1234)
        kmeans.train(keys_from_ids(self.ext.numpy(), ids))
        quantizer = faiss.IndexFlatL2(self.dim)
        quantizer.add(kmeans.centroids)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.n, self.nbits)
        index.by_residual = False  # codes encode the key itself, so they stay exact
        self._set_centroids(index.pq)
        index.is_trained = True
        return index

    def add(self, ids: np.ndarray) -> None:
        ext = self.ext.numpy()
        for start in range(0, len(ids), ADD_CHUNK):
            chunk = ids[start : start + ADD_CHUNK]
            _, lists = self.index.quantizer.search(keys_from_ids(ext, chunk), 1)  # coarse assignment [e, 1]
            self._add_to_lists(lists[:, 0], pack_codes(chunk, self.nbits))
        self._gpu = None

    def _add_to_lists(self, lists: np.ndarray, codes: np.ndarray) -> None:
        """Append codes [e, code_size] with labels ntotal.. to their inverted lists, no re-encoding."""
        labels = self.index.ntotal + np.arange(len(codes), dtype=np.int64)
        order = np.argsort(lists, kind="stable")
        starts = np.flatnonzero(np.diff(lists[order], prepend=-1))
        for group in np.split(order, starts[1:]):
            ids, group_codes = np.ascontiguousarray(labels[group]), np.ascontiguousarray(codes[group])
            self.index.invlists.add_entries(
                int(lists[group[0]]), len(group), faiss.swig_ptr(ids), faiss.swig_ptr(group_codes)
            )
        self.index.ntotal += len(codes)


class TorchCompact(Backend):
    """The compact exact search in pure torch, so it runs on the GPU: ids [E, n] live on the device and a
    query batch builds lookup tables T[q, j, v] = ||q_j - ext[v]||^2, an entry's distance is sum_j T[q, j, id_j].
    """

    name = "torch_compact"
    # chunk: entries scored at once (memory ~ Q * chunk * 4 bytes); devices: "" (the database's device) or
    # "cuda:0,cuda:1,...", the devices the entries are sharded over
    build_params = {"chunk": 1 << 18, "devices": ""}
    search_params = ("chunk", "devices")
    runtime_params = ("devices",)
    saves_index = False  # the ids are the database's codes rearranged; rebuilt on load

    def __init__(self, ext, n, device="cpu", **params):
        super().__init__(ext, n, device, **params)
        self.id_dtype = torch.int16 if self.num_codes <= torch.iinfo(torch.int16).max else torch.int32
        self.pieces: list[torch.Tensor] = []  # [E_i, n] each, in label order
        self.placement: list[torch.device] = []  # the shard (one of self.devices) holding each piece
        self.ext_on: dict[torch.device, torch.Tensor] = {}  # the extended codebook [K+1, D] per device, cached

    @property
    def devices(self) -> list[torch.device]:
        names = [d.strip() for d in str(self.params["devices"] or "").split(",") if d.strip()]
        return [torch.device(d) for d in names] or [torch.device(self.device)]

    @property
    def ntotal(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def _place(self, piece: torch.Tensor, load: dict) -> None:
        """Put the next piece (in label order) on the least loaded device."""
        device = min(load, key=lambda d: (load[d], list(load).index(d)))
        self.pieces.append(piece.to(device, self.id_dtype))
        self.placement.append(device)
        load[device] += len(piece)

    def add(self, ids: np.ndarray | torch.Tensor) -> None:
        load = {d: 0 for d in self.devices}
        for piece, device in zip(self.pieces, self.placement):
            load[device] += len(piece)
        self._place(torch.as_tensor(ids), load)

    def _apply_search_params(self) -> None:
        """Place the pieces again over the (possibly changed) devices."""
        pieces, self.pieces, self.placement = self.pieces, [], []
        load = {d: 0 for d in self.devices}
        for piece in pieces:
            self._place(piece, load)

    def _tables(self, queries: torch.Tensor, device: torch.device) -> torch.Tensor:
        """queries [Q, n*D] -> T [Q, n, K+1], squared distances of each query part to each extended row."""
        q = queries.to(device, torch.float32).reshape(len(queries), self.n, -1)  # [Q, n, D]
        if device not in self.ext_on:
            self.ext_on[device] = self.ext.to(device)
        ext = self.ext_on[device]
        cross = torch.einsum("qjd,vd->qjv", q, ext)
        return (q.square().sum(-1, keepdim=True) + ext.square().sum(-1) - 2 * cross).clamp_min(0)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each device's running top-k over its own pieces, then the devices' lists merged. The device loops
        are issued one after another but only the final merge waits for them, so the GPUs work at once."""
        num_queries, chunk = len(queries), int(self.params["chunk"])
        running = {}  # device -> (distances [Q, <=k], labels [Q, <=k]) on that device
        offset = 0
        for piece, device in zip(self.pieces, self.placement):
            if device not in running:
                empty = torch.empty(num_queries, 0, device=device)
                running[device] = (empty, empty.long(), self._tables(queries, device))  # tables [Q, n, K+1]
            best, best_labels, tables = running[device]
            for start in range(0, len(piece), chunk):
                ids = piece[start : start + chunk].long()  # [e, n]
                dists = sum(tables[:, j].index_select(1, ids[:, j]) for j in range(self.n))  # [Q, e]
                labels = torch.arange(offset + start, offset + start + len(ids), device=device)
                best, best_labels = _top_k(
                    torch.cat([best, dists], 1), torch.cat([best_labels, labels.expand(num_queries, -1)], 1), k
                )
            running[device] = (best, best_labels, tables)
            offset += len(piece)
        if not running:
            empty = torch.empty(num_queries, 0, device=self.device)
            return empty, empty.long()
        dists = torch.cat([best.to(self.device) for best, _, _ in running.values()], 1)
        labels = torch.cat([best_labels.to(self.device) for _, best_labels, _ in running.values()], 1)
        return _top_k(dists, labels, k)

    def key_bytes(self) -> float:
        return float(self.n * torch.empty(0, dtype=self.id_dtype).element_size())

    def list_id_bytes(self) -> float:
        return 0.0


def _top_k(dists: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances per row [Q, <=k] (ascending) and their labels."""
    best, pos = dists.topk(min(k, dists.shape[1]), dim=1, largest=False)
    return best, labels.gather(1, pos)


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (Flat, IVFFlat, IVFPQ, OPQIVFPQ, Compact, IVFCompact, TorchCompact)
}


def make_backend(name: str, ext: torch.Tensor, n: int, device: str = "cpu", **params) -> Backend:
    """The backend called `name` for extended codebook ext [K+1, D] and keys of n neighbours."""
    if name not in BACKENDS:
        raise ValueError(f"unknown index {name!r}; known indexes: {', '.join(BACKENDS)}")
    return BACKENDS[name](ext, n, device, **params)
