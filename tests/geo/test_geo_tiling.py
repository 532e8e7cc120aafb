"""The tile grid: full-size overlapping windows, cores that partition the raster, neighbour pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from samkit.geo import GeoError, TileGrid


@pytest.mark.parametrize("w,h,size,overlap", [(265, 190, 100, 20), (1000, 1000, 256, 32), (50, 40, 1024, 128),
                                             (1024, 1025, 1024, 128), (300, 300, 100, 0)])
def test_grid_covers_with_full_tiles_and_cores_partition(w, h, size, overlap):
    g = TileGrid(w, h, size, overlap)
    cover = np.zeros((h, w), np.int32)
    owned = np.zeros((h, w), np.int32)
    for t in g.tiles:
        assert t.shape == (min(size, h), min(size, w)), "every window is a full tile (or the whole raster)"
        cover[t.r0:t.r1, t.c0:t.c1] += 1
        r0, c0, r1, c1 = t.core
        assert t.r0 <= r0 < r1 <= t.r1 and t.c0 <= c0 < c1 <= t.c1
        owned[r0:r1, c0:c1] += 1
    assert cover.min() >= 1
    assert (owned == 1).all(), "cores must partition the raster"
    for (s0, e0), (s1, e1) in zip(g.col_spans, g.col_spans[1:]):
        assert e0 - s1 >= overlap


def test_neighbour_pairs_are_all_overlapping_windows():
    g = TileGrid(265, 190, 100, 20)

    def ov(a0, a1, b0, b1):
        return a0 < b1 and b0 < a1

    expect = {(a.key, b.key) for a, b in itertools.combinations(g.tiles, 2)
              if ov(a.r0, a.r1, b.r0, b.r1) and ov(a.c0, a.c1, b.c0, b.c1)}
    got = {(a.key, b.key) for a, b, kind in g.neighbour_pairs() if kind == "overlap"}
    assert got == expect and len(expect) > 10


def test_abutting_tiles_pair_by_contact():
    g = TileGrid(300, 300, 100, 0)
    kinds = {(a.key, b.key): k for a, b, k in g.neighbour_pairs()}
    assert kinds[("r0c0", "r0c1")] == "contact_cols"
    assert kinds[("r0c0", "r1c0")] == "contact_rows"
    assert len(kinds) == 12


def test_cores_in_finds_every_core_touching_a_box():
    g = TileGrid(400, 300, 100, 20)
    box = (50, 150, 120, 260)
    expect = {t.key for t in g.tiles if t.core[0] < box[2] and box[0] < t.core[2]
              and t.core[1] < box[3] and box[1] < t.core[3]}
    assert {t.key for t in g.cores_in(*box)} == expect


@pytest.mark.parametrize("size,overlap", [(8, 0), (100, 50), (100, -1)])
def test_bad_grid_parameters(size, overlap):
    with pytest.raises(GeoError):
        TileGrid(100, 100, size, overlap)
