"""`arrag bench retrieval-scaling`: how the patch database's cost grows with its size, extrapolated to the paper's.

Databases of increasing size (e.g. 2M, 8M, 32M, 128M entries) in Janus-Pro's key layout (hop-1 causal keys over a
16384 x 8 codebook, 24 x 24 grids), per index backend: build time, bytes per entry, queries per second at batch
32 and 256 (k = 10), recall@10 against a brute-force search over the same keys. Then the growth is fitted by least
squares (memory: bytes per entry x entries, linear; QPS and build time: a power law a * N^b, i.e. a straight line
in log-log) and extrapolated to the paper's 7.83 billion entries.

The base grids are real token grids (arrag.bench.janus_size.scene_token_grids, or any code shards); larger
databases tile them: copy t >= 1 of every grid has a fraction `perturb` of its tokens replaced by tokens drawn
from the base grids at random positions (seeded by t), so copies are new grids with the corpus' token statistics
rather than exact duplicates. The queries are keys of held-out grids at random positions.

A measurement whose single batch would run past `max_batch_seconds` (predicted from the previous size, linear in
the entries) is skipped and reported as such, so that exact search at 128M entries does not take the run's hours.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from arrag.bench.retrieval import _machine, tie_aware_recall
from arrag.io import atomic_path, write_json, write_text
from arrag.retrieval.database import PatchDatabase
from arrag.retrieval.keys import neighbourhood_keys

PAPER_ENTRIES = 7_830_000_000  # the paper's database (13.6M images x 576 positions)
K = 10


def tiled_grids(base: torch.Tensor, copy: int, perturb: float) -> torch.Tensor:
    """Copy `copy` of the base grids [N, H, W]: copy 0 is the base itself; copy t >= 1 has each token replaced with
    probability `perturb` by a token of the base grids at a random position (a generator seeded by t)."""
    if copy == 0:
        return base
    gen = torch.Generator().manual_seed(copy)
    flat = base.reshape(-1)
    replace = torch.rand(base.shape, generator=gen) < perturb
    drawn = flat[torch.randint(0, len(flat), base.shape, generator=gen)]
    return torch.where(replace, drawn.int(), base.int()).to(base.dtype)


def exact_kth(base: torch.Tensor, copies: int, perturb: float, codebook: torch.Tensor, queries, k: int = K):
    """The exact k-th smallest squared distance of each query [Q] over every key of the tiled database, by brute
    force over keys built chunk by chunk from the grids (written apart from every backend: the reference)."""
    best = torch.full((len(queries), k), float("inf"))
    q_sq = (queries**2).sum(1, keepdim=True)
    for copy in range(copies):
        grids = tiled_grids(base, copy, perturb)
        for start in range(0, len(grids), 256):
            keys = neighbourhood_keys(grids[start : start + 256], codebook).flatten(0, 2)  # [n*H*W, 4*D]
            d = q_sq + (keys**2).sum(1)[None] - 2 * queries @ keys.T
            best = torch.cat([best, d], 1).topk(k, dim=1, largest=False).values
    return best[:, k - 1]


def build_tiled(base: torch.Tensor, copies: int, perturb: float, codebook, name: str, params: dict) -> PatchDatabase:
    db = PatchDatabase.build(base, codebook, hops=1, causal=True, index=name, **params)
    for copy in range(1, copies):
        db.add(tiled_grids(base, copy, perturb))
    return db


def timed_search(db: PatchDatabase, queries: torch.Tensor, batch: int, min_seconds: float = 1.0):
    """(queries per second, sources [q, k, 3] of the q <= Q queries the first pass reached): batches cycle over
    the queries until `min_seconds` have passed, at least one batch."""
    done, first, t0 = 0, [], time.perf_counter()
    starts = range(0, len(queries) - batch + 1, batch)
    while True:
        for start in starts:
            _, _, sources = db.search(queries[start : start + batch], K)
            if done < len(starts) * batch:  # the first pass
                first.append(sources)
            done += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                return done / elapsed, torch.cat(first)


def hit_keys(base: torch.Tensor, perturb: float, codebook: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """The key of every hit [Q, k, n*D], rebuilt from its provenance (image id = copy * N + grid, row, column);
    NaN where the search returned no hit."""
    n, (image, row, col) = len(base), sources.unbind(-1)
    found = image >= 0
    out = torch.full((*image.shape, 4 * codebook.shape[1]), float("nan"))
    for copy in torch.unique(image[found] // n).tolist():
        mine = found & (image // n == copy)
        needed, inverse = torch.unique(image[mine] % n, return_inverse=True)
        keys = neighbourhood_keys(tiled_grids(base, copy, perturb)[needed], codebook)  # [u, H, W, n*D]
        out[mine] = keys[inverse, row[mine], col[mine]]
    return out


def run_scaling(
    base: torch.Tensor,
    query_grids: torch.Tensor,
    codebook: torch.Tensor,
    sizes: list[int],
    backends: list[tuple[str, dict]],
    *,
    perturb: float = 0.05,
    n_queries: int = 256,
    batches: tuple[int, ...] = (32, 256),
    max_batch_seconds: float = 60.0,
    min_seconds: float = 1.0,
    data_note: str = "",
    seed: int = 0,
    log=lambda line: print(line, file=sys.stderr, flush=True),
    on_size=lambda partial: None,
) -> dict:
    """base [N, H, W] real grids tiled to each of `sizes` entries (rounded up to whole copies); query_grids held
    out. Returns every (size, backend) row and the fits (see the module docstring); `on_size` receives the same
    for the sizes done so far after each size (a long run's partial results)."""
    if not 0 <= perturb < 1:
        raise ValueError(f"perturb={perturb}: give the fraction of tokens replaced in each copy, in [0, 1)")
    gen = torch.Generator().manual_seed(seed)
    q_all = neighbourhood_keys(query_grids, codebook).flatten(0, 2)
    queries = q_all[torch.randperm(len(q_all), generator=gen)[:n_queries]].contiguous()  # [Q, n*D]
    per_copy = base[0].numel() * len(base)
    rows, last = [], {}  # last: (backend index, batch) -> (entries, seconds per batch)
    for size in sorted(sizes):
        copies = max(1, math.ceil(size / per_copy))
        entries = copies * per_copy
        t0 = time.perf_counter()
        kth = exact_kth(base, copies, perturb, codebook, queries)
        log(f"[scaling] {entries:,} entries: brute force, {len(queries)} queries: {time.perf_counter() - t0:.0f} s")
        for b_index, (name, params) in enumerate(backends):
            t0 = time.perf_counter()
            db = build_tiled(base, copies, perturb, codebook, name, params)
            row = {"entries": entries, "backend": name, "params": params, "build_seconds": time.perf_counter() - t0}
            row["bytes_per_entry"] = db.bytes_per_entry()
            recall_sources = None
            for b in batches:
                seen = last.get((b_index, b))
                predicted = seen[1] * entries / seen[0] if seen else 0.0
                if predicted > max_batch_seconds:
                    row[f"qps@{b}"], row[f"skipped@{b}"] = None, f"one batch predicted at {predicted:.0f} s"
                    continue
                qps, sources = timed_search(db, queries, b, min_seconds)
                row[f"qps@{b}"] = qps
                last[(b_index, b)] = (entries, b / qps)
                if recall_sources is None or len(sources) > len(recall_sources):
                    recall_sources = sources
            if recall_sources is not None:
                q = len(recall_sources)
                true_d = ((hit_keys(base, perturb, codebook, recall_sources) - queries[:q, None]) ** 2).sum(-1)
                row["recall@10"], row["recall_queries"] = tie_aware_recall(true_d, kth[:q]), q
            rows.append(row)
            log(f"[scaling] {name} {params} at {entries:,}: {row}")
            del db
        on_size(_result(rows, base, codebook, perturb, queries, data_note, backends, batches))
    return _result(rows, base, codebook, perturb, queries, data_note, backends, batches)


def _result(rows, base, codebook, perturb, queries, data_note, backends, batches) -> dict:
    return {
        "command": "arrag bench retrieval-scaling",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "base_grids": len(base),
        "grid": list(base.shape[1:]),
        "codebook": list(codebook.shape),
        "perturb": perturb,
        "queries": len(queries),
        "k": K,
        "data": data_note,
        "rows": rows,
        "fits": fit_growth(rows, [name for name, _ in backends], batches),
    }


def total_bytes_per_entry(row: dict) -> float:
    return sum(row["bytes_per_entry"].values())


def power_fit(xs: list[float], ys: list[float]) -> dict | None:
    """y = a * x^b by least squares on (log x, log y); None with fewer than two points."""
    if len(xs) < 2:
        return None
    b, log_a = np.polyfit(np.log(xs), np.log(ys), 1)
    return {"a": float(math.exp(log_a)), "b": float(b), "points": len(xs)}


def predict(fit: dict | None, x: float) -> float | None:
    return None if fit is None else fit["a"] * x ** fit["b"]


def fit_growth(rows: list[dict], backends: list[str], batches) -> dict:
    """Per backend label: memory (bytes per entry of the largest size x entries), power-law fits of build
    seconds and QPS, and their values at PAPER_ENTRIES."""
    fits = {}
    for label in dict.fromkeys(_label(r) for r in rows):
        mine = [r for r in rows if _label(r) == label]
        bpe = total_bytes_per_entry(mine[-1])
        fit = {"bytes_per_entry": bpe, "paper_memory_gb": bpe * PAPER_ENTRIES / 1e9}
        build = power_fit([r["entries"] for r in mine], [r["build_seconds"] for r in mine])
        fit["build"] = build
        fit["paper_build_hours"] = None if build is None else predict(build, PAPER_ENTRIES) / 3600
        for b in batches:
            have = [r for r in mine if r.get(f"qps@{b}")]
            qps = power_fit([r["entries"] for r in have], [r[f"qps@{b}"] for r in have])
            fit[f"qps@{b}"] = qps
            fit[f"paper_qps@{b}"] = predict(qps, PAPER_ENTRIES)
        fits[label] = fit
    return fits


def _label(row: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in row["params"].items())
    return row["backend"] + (f" ({params})" if params else "")


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown_table(result: dict) -> str:
    batches = sorted(int(k.split("@")[1]) for k in result["rows"][0] if k.startswith("qps@"))
    head = ["entries", "backend", "build s", "B/entry (key+list id+value+prov.)", "recall@10"]
    head += [f"QPS@{b}" for b in batches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        bpe = r["bytes_per_entry"]
        parts = "+".join(f"{bpe[k]:g}" for k in ("keys", "list_ids", "values", "provenance"))
        recall = f"{r['recall@10']:.3f} ({r['recall_queries']} q)" if "recall@10" in r else "–"
        cells = [f"{r['entries']:,}", _label(r), _num(r["build_seconds"]), f"{total_bytes_per_entry(r):.2f} ({parts})"]
        cells += [recall] + [_num(r[f"qps@{b}"]) if r[f"qps@{b}"] else "skipped" for b in batches]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Extrapolated to the paper's {PAPER_ENTRIES / 1e9:.2f} billion entries (this machine's threads):",
        "",
    ]
    head = ["backend", "memory GB", "build: b in N^b", "build hours"]
    head += [h for b in batches for h in (f"QPS@{b}: b in N^b", f"QPS@{b}")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, f in result["fits"].items():
        cells = [
            label,
            f"{f['paper_memory_gb']:,.0f}",
            _num(f["build"] and f["build"]["b"]),
            _num(f["paper_build_hours"]),
        ]
        for b in batches:
            cells += [_num(f[f"qps@{b}"] and f[f"qps@{b}"]["b"]), _num(f[f"paper_qps@{b}"])]
        lines.append("| " + " | ".join(cells) + " |")
    data = f"{result['base_grids']:,} grids of {result['grid'][0]}x{result['grid'][1]} ({result['data']})"
    note = (
        f"\nBase: {data}; larger databases tile them, {100 * result['perturb']:g}% of each copy's tokens replaced by "
        f"tokens drawn from the base grids; hop-1 causal keys, codebook {result['codebook'][0]}x"
        f"{result['codebook'][1]}; {result['queries']} held-out queries, k = {result['k']}; recall@10 tie-aware "
        "against brute force over the same keys. Memory = bytes per entry x entries; build time and QPS fitted as "
        'a N^b (least squares in log-log) over the measured sizes; "skipped": one batch predicted past the time '
        f"limit. Machine: {result['machine']}; {result['date']}.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot(result: dict, path: str | Path) -> None:
    """QPS and memory against entries (log-log), measured points and the fitted lines out to the paper's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_qps, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = np.logspace(math.log10(min(r["entries"] for r in result["rows"])), math.log10(PAPER_ENTRIES), 50)
    for i, (label, f) in enumerate(result["fits"].items()):
        colour = f"C{i}"
        mine = [r for r in result["rows"] if _label(r) == label]
        for b, style in ((32, "-"), (256, "--")):
            have = [r for r in mine if r.get(f"qps@{b}")]
            ax_qps.plot([r["entries"] for r in have], [r[f"qps@{b}"] for r in have], "o", color=colour)
            if f.get(f"qps@{b}"):
                ax_qps.plot(xs, predict(f[f"qps@{b}"], xs), style, color=colour, label=f"{label} @{b}")
        ax_mem.plot(xs, f["bytes_per_entry"] * xs / 1e9, color=colour, label=label)
        ax_mem.plot([r["entries"] for r in mine], [total_bytes_per_entry(r) * r["entries"] / 1e9 for r in mine], "o",
                    color=colour)  # fmt: skip
    for ax, ylabel in ((ax_qps, "queries per second (k = 10)"), (ax_mem, "memory (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axvline(PAPER_ENTRIES, color="grey", lw=0.8)
        ax.set_xlabel("database entries")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"Patch-database scaling ({result['machine']}, {result['date']}); grey: the paper's 7.83B")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_results(result: dict, out_json, out_md, out_png) -> None:
    write_json(out_json, result)
    write_text(out_md, markdown_table(result))
    plot(result, out_png)
