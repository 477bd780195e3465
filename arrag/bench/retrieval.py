"""`arrag bench retrieval`: index backends side by side on one database, in one run.

For each backend: build time, bytes per entry (keys, values, provenance), queries per second at
several batch sizes, and recall@k against exact search. Many neighbourhood keys repeat (flat
backgrounds give identical neighbours), so exact top-k ids are not unique; recall is tie-aware: a hit
counts when its true distance is within the exact k-th distance (+1e-5).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

from arrag.io import write_json, write_text
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys

# The authors' effective configuration (docs/design.md): OPQ8 + IVF800 + PQ8 searching one list.
AUTHORS_BASELINE = ("opq_ivf_pq", {"m": 8, "nlist": 800, "nprobe": 1})


def exact_top_k(db_keys: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 262144) -> torch.Tensor:
    """Exact k-th smallest squared distance per query [Q], by brute force in chunks (hand-written: it is
    the reference every backend is compared with, so it must not share code with them)."""
    best = torch.full((len(queries), k), float("inf"))
    q_sq = (queries**2).sum(1, keepdim=True)
    for start in range(0, len(db_keys), chunk):
        x = db_keys[start : start + chunk]
        d = q_sq + (x**2).sum(1)[None] - 2 * queries @ x.T  # [Q, chunk]
        best = torch.cat([best, d], 1).topk(k, dim=1, largest=False).values
    return best  # [Q, k] ascending


def tie_aware_recall(true_dists_of_hits: torch.Tensor, exact_kth: torch.Tensor) -> float:
    """Fraction of returned hits whose true distance is within the exact k-th distance."""
    return (true_dists_of_hits <= exact_kth[:, None] + 1e-5).double().mean().item()


def queries_per_second(db: PatchDatabase, queries: torch.Tensor, batch: int, k: int, min_seconds: float = 1.0) -> float:
    done, t0 = 0, time.perf_counter()
    while True:
        for start in range(0, len(queries) - batch + 1, batch):
            db.search(queries[start : start + batch], k)
            done += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or done >= 20 * len(queries):
            return done / elapsed


def run_retrieval_bench(
    codes: torch.Tensor,
    query_codes: torch.Tensor,
    codebook: torch.Tensor,
    backends: list[tuple[str, dict]],
    *,
    hops: int = 1,
    causal: bool = True,
    n_queries: int = 2048,
    batches: tuple[int, ...] = (1, 32, 256),
    ks: tuple[int, ...] = (10, 100),
    data_note: str = "",
    seed: int = 0,
) -> dict:
    """codes [N, H, W] -> database; query_codes [M, H, W] held-out grids -> queries at random positions."""
    gen = torch.Generator().manual_seed(seed)
    q_all = neighbourhood_keys(query_codes, codebook, hops=hops, causal=causal).flatten(0, 2)
    queries = q_all[torch.randperm(len(q_all), generator=gen)[:n_queries]].contiguous()
    db_keys = neighbourhood_keys(codes, codebook, hops=hops, causal=causal).flatten(0, 2)
    kmax = max(ks)
    exact = exact_top_k(db_keys, queries, kmax)  # [Q, kmax]

    rows = []
    for name, params in backends:
        t0 = time.perf_counter()
        db = PatchDatabase.build(codes, codebook, hops=hops, causal=causal, index=name, **params)
        build_s = time.perf_counter() - t0
        row = {
            "backend": name,
            "params": params,
            "build_seconds": build_s,
            "entries": len(db),
            "bytes_per_entry": db.bytes_per_entry(),
        }
        for k in ks:
            _, _, sources = db.search(queries, k)  # recompute each hit's true distance from its provenance
            image, r, c = sources[..., 0], sources[..., 1], sources[..., 2]  # image ids = rows of `codes`
            hit_keys = db_keys.view(len(codes), codes.shape[1], codes.shape[2], -1)[image, r, c]  # [Q, k, n*D]
            true_d = ((hit_keys - queries[:, None]) ** 2).sum(-1)
            row[f"recall@{k}"] = tie_aware_recall(true_d, exact[:, k - 1])
        for b in batches:
            qs = queries[: max(b * 8, 64)] if b == 1 else queries
            row[f"qps@{b}"] = queries_per_second(db, qs, b, 10)
        rows.append(row)
        print(f"[bench retrieval] {name} {params}: {row}", file=sys.stderr, flush=True)
        del db
    flat_qps = next((r["qps@32"] for r in rows if r["backend"] == "flat"), None)
    for r in rows:
        r["speedup@32_vs_flat"] = r["qps@32"] / flat_qps if flat_qps else None
    return {
        "entries": len(db_keys),
        "images": len(codes),
        "grid": list(codes.shape[1:]),
        "codebook": list(codebook.shape),
        "hops": hops,
        "causal": causal,
        "queries": len(queries),
        "data": data_note,
        "machine": _machine(),
        "rows": rows,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def markdown_table(result: dict) -> str:
    ks = sorted(int(k.split("@")[1]) for k in result["rows"][0] if k.startswith("recall@"))
    bs = sorted(int(k.split("@")[1]) for k in result["rows"][0] if k.startswith("qps@"))
    head = ["backend", "params", "build s", "key B/entry", "IVF id B/entry", "value B/entry", "prov. B/entry"]
    head += [f"recall@{k}" for k in ks] + [f"QPS@{b}" for b in bs] + ["×flat @32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        bpe = r["bytes_per_entry"]
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "–"
        cells = [
            r["backend"],
            params,
            f"{r['build_seconds']:.1f}",
            f"{bpe['keys']:.2f}",
            f"{bpe['list_ids']:.0f}",
            f"{bpe['values']:.2f}",
            f"{bpe['provenance']:.3f}",
        ]
        cells += [f"{r[f'recall@{k}']:.3f}" for k in ks] + [f"{r[f'qps@{b}']:.0f}" for b in bs]
        cells.append(f"{r['speedup@32_vs_flat']:.1f}" if r["speedup@32_vs_flat"] else "–")
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{result['entries']:,} entries ({result['images']:,} images × {result['grid'][0]}×{result['grid'][1]}), "
        f"codebook {result['codebook'][0]}×{result['codebook'][1]}, hop-{result['hops']} "
        f"{'causal' if result['causal'] else 'full'} keys, {result['queries']} held-out queries; "
        f"data: {result['data']}; machine: {result['machine']}. Recall is tie-aware (see arrag/bench/retrieval.py).\n"
    )
    return "\n".join(lines) + "\n" + note


def write_results(result: dict, out_json: str | Path, out_md: str | Path) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))
