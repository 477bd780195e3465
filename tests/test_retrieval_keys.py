"""Neighbourhood keys against a direct re-computation with explicit loops over positions."""

import pytest
import torch

from arrag.retrieval.keys import neighbour_offsets, neighbourhood_ids, neighbourhood_keys, query_from_grid


def loop_offsets(hops: int, causal: bool) -> list[tuple[int, int]]:
    """Written out independently: the window row by row, left to right, centre skipped."""
    out = []
    for dr in range(-hops, hops + 1):
        for dc in range(-hops, hops + 1):
            if dr == 0 and dc == 0:
                if causal:
                    break  # everything from the centre on is not generated yet
                continue
            out.append((dr, dc))
        if causal and dr == 0:
            break
    return out


def loop_keys(grid: torch.Tensor, codebook: torch.Tensor, hops: int, causal: bool) -> torch.Tensor:
    """grid [N, H, W] (-1 = missing) -> keys [N, H, W, n*D], one position and one neighbour at a time."""
    num, height, width = grid.shape
    dim = codebook.shape[1]
    offsets = loop_offsets(hops, causal)
    keys = torch.zeros(num, height, width, len(offsets) * dim)
    for i in range(num):
        for r in range(height):
            for c in range(width):
                for j, (dr, dc) in enumerate(offsets):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width and grid[i, rr, cc] >= 0:
                        keys[i, r, c, j * dim : (j + 1) * dim] = codebook[grid[i, rr, cc]]
    return keys


@pytest.fixture
def small():
    gen = torch.Generator().manual_seed(0)
    codebook = torch.nn.functional.normalize(torch.randn(7, 3, generator=gen), dim=1)
    codes = torch.randint(0, 7, (2, 5, 4), generator=gen)
    return codes, codebook


def test_offsets_order_and_counts():
    assert neighbour_offsets(1, True) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    assert neighbour_offsets(1, False) == [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    for hops, causal, count in [(1, True, 4), (2, True, 12), (1, False, 8), (2, False, 24), (3, True, 24)]:
        offsets = neighbour_offsets(hops, causal)
        assert len(offsets) == count
        assert offsets == sorted(offsets) == loop_offsets(hops, causal)  # raster order


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_keys_match_loops(small, hops, causal):
    codes, codebook = small
    keys = neighbourhood_keys(codes, codebook, hops, causal)
    n = len(neighbour_offsets(hops, causal))
    assert keys.shape == (2, 5, 4, n * 3)
    torch.testing.assert_close(keys, loop_keys(codes, codebook, hops, causal), rtol=0, atol=0)


def test_ids_pad_off_the_grid(small):
    codes, _ = small
    ids = neighbourhood_ids(codes, 1, True, pad_id=7)  # [2, 5, 4, 4]
    assert (ids[:, 0, :, :3] == 7).all() and (ids[:, :, 0, 0] == 7).all() and (ids[:, :, 0, 3] == 7).all()
    assert torch.equal(ids[:, 2, 2], torch.stack([codes[:, 1, 1], codes[:, 1, 2], codes[:, 1, 3], codes[:, 2, 1]], 1))
    # the top-left corner of a causal key has no neighbour at all: a zero key
    assert (neighbourhood_ids(codes, 2, True, pad_id=7)[:, 0, 0] == 7).all()


@pytest.mark.parametrize("hops", [1, 2])
def test_query_equals_key_when_the_prefix_is_generated(small, hops):
    codes, codebook = small
    keys = neighbourhood_keys(codes, codebook, hops, causal=True)
    for row in range(5):
        for col in range(4):
            grid = codes.clone().view(2, -1)
            grid[:, row * 4 + col :] = -1  # raster decoding: (row, col) and later positions not generated
            query = query_from_grid(grid.view(2, 5, 4), row, col, codebook, hops, causal=True)
            torch.testing.assert_close(query, keys[:, row, col], rtol=0, atol=0)


def test_query_zeros_for_not_generated_neighbours(small):
    codes, codebook = small
    grid = codes.clone()
    grid[0, 3:] = -1
    grid[1, 2, 2:] = -1
    expected = loop_keys(grid, codebook, 1, causal=False)
    for row, col in [(2, 1), (2, 3), (0, 0), (4, 3), (1, 2)]:
        query = query_from_grid(grid, row, col, codebook, 1, causal=False)
        torch.testing.assert_close(query, expected[:, row, col], rtol=0, atol=0)
    # (2, 1) in image 0: the row below is missing, so the last three neighbours are zero
    assert (query_from_grid(grid, 2, 1, codebook, 1, causal=False)[0, 5 * 3 :] == 0).all()


def test_bad_inputs(small):
    codes, codebook = small
    with pytest.raises(ValueError, match="hops"):
        neighbour_offsets(0, True)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        neighbourhood_keys(codes[0], codebook)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        neighbourhood_keys(codes + 7, codebook)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        neighbourhood_keys(codes - 1, codebook)
    with pytest.raises(ValueError, match="2-D"):
        neighbourhood_keys(codes, codebook[0])
    with pytest.raises(ValueError, match="integer"):
        neighbourhood_keys(codes.float(), codebook)
    with pytest.raises(ValueError, match="outside"):
        query_from_grid(codes, 5, 0, codebook)
    with pytest.raises(ValueError, match="-1"):
        query_from_grid(codes - 2, 1, 1, codebook)
