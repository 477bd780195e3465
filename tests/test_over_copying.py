import json

import numpy as np
import torch

from arrag.evaluation.over_copying import (
    copy_sources,
    largest_single_source_region,
    over_copying,
    read_copying_records,
    summarise,
)


def test_copy_sources_picks_the_closest_matching_hit():
    codes = torch.tensor([[[5, 6], [7, 8]]])  # one 2x2 image
    values = torch.tensor([[[5, 5]], [[1, 6]], [[2, 3]], [[8, -1]]])  # [T=4, B=1, k=2]
    sources = torch.tensor(
        [
            [[[10, 0, 0], [11, 0, 0]]],
            [[[12, 0, 0], [13, 0, 0]]],
            [[[14, 0, 0], [15, 0, 0]]],
            [[[16, 0, 0], [-1, -1, -1]]],
        ]
    )
    src = copy_sources(codes, values, sources)
    assert src.tolist() == [[[10, 13], [-1, 16]]]


def test_largest_region_is_four_connected_and_single_source():
    grid = np.array([[1, 1, -1, 2], [-1, 1, -1, 2], [2, -1, 1, 2], [2, 2, -1, 2]])
    assert largest_single_source_region(grid) == (4, 2)  # the right column; diagonal 1s do not join
    rows = over_copying(torch.from_numpy(grid)[None])
    assert rows[0]["copied_fraction"] == 11 / 16 and rows[0]["largest_region_fraction"] == 4 / 16
    assert rows[0]["largest_region_source"] == 2 and rows[0]["top_sources"][0] == [2, 7]
    assert largest_single_source_region(np.full((3, 3), -1)) == (0, -1)


def test_summaries_from_prompt_folders(tmp_path):
    for i, fracs in enumerate([[0.5, 0.25], [1.0]]):
        (tmp_path / f"{i:05d}").mkdir()
        rows = [{"copied_fraction": f, "largest_region_fraction": f / 2} for f in fracs]
        (tmp_path / f"{i:05d}" / "copying.json").write_text(json.dumps(rows))
    summary = summarise(read_copying_records(tmp_path))
    assert summary["images"] == 3
    assert abs(summary["copied_fraction_mean"] - 1.75 / 3) < 1e-12 and summary["largest_region_fraction_max"] == 0.5
