"""Patch-level retrieval (paper section 3.1): neighbourhood keys, the PatchDatabase and its index backends."""

from arrag.retrieval.backends import BACKENDS
from arrag.retrieval.database import FORMAT, PatchDatabase
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
