"""Patch-level retrieval (paper section 3.1): neighbourhood keys, the PatchDatabase and its index backends."""

from arrag.retrieval.keys import neighbour_offsets, neighbourhood_ids, neighbourhood_keys, query_from_grid

__all__ = [
    "BACKENDS",
    "FORMAT",
    "PatchDatabase",
    "neighbour_offsets",
    "neighbourhood_ids",
    "neighbourhood_keys",
    "query_from_grid",
]


def __getattr__(name: str):
    # the database imports FAISS; load it on first use so keys (and DAiD's queries) work without FAISS
    if name in ("PatchDatabase", "FORMAT"):
        from arrag.retrieval import database

        return getattr(database, name)
    if name == "BACKENDS":
        from arrag.retrieval.backends import BACKENDS

        return BACKENDS
    raise AttributeError(f"module 'arrag.retrieval' has no attribute {name!r}")
