"""The tile grid: overlapping windows that cover the raster, and the core each tile owns.

Along each axis ``n`` windows of ``tile_size`` pixels are spread evenly from the first to the
last pixel, so that consecutive windows overlap by at least ``overlap`` pixels and every window
is a full tile (a raster smaller than a tile is one window of its own size). Each tile *owns*
the part of the raster nearer to it than to its neighbours (its core: cut at the middle of
each overlap); the cores partition the raster.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from rasterio.windows import Window

from .errors import GeoError


def axis_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    if length <= size:
        return [(0, length)]
    stride = size - overlap
    n = math.ceil((length - size) / stride) + 1
    starts = [round(k * (length - size) / (n - 1)) for k in range(n)]
    return [(s, s + size) for s in starts]


def axis_cores(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    cuts = [0]
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        cuts.append((s1 + e0) // 2)
    cuts.append(spans[-1][1])
    return list(zip(cuts[:-1], cuts[1:]))


@dataclass(frozen=True)
class Tile:
    row: int
    col: int
    r0: int
    c0: int
    r1: int
    c1: int
    core: tuple[int, int, int, int]  # r0, c0, r1, c1 of the owned part

    @property
    def key(self) -> str:
        return f"r{self.row}c{self.col}"

    @property
    def name(self) -> str:
        return window_name(self.c0, self.r0, self.c1 - self.c0, self.r1 - self.r0)

    @property
    def window(self) -> Window:
        return Window(self.c0, self.r0, self.c1 - self.c0, self.r1 - self.r0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0


def window_name(c0: int, r0: int, width: int, height: int) -> str:
    """The ``tile`` attribute of an output polygon: the raster window it was segmented in, in
    pixels, as ``x{column}y{row}w{width}h{height}`` (the numbers of ``gdal_translate -srcwin``);
    the same in vectorize (a grid tile) and prompt mode (a prompt's window)."""
    return f"x{c0}y{r0}w{width}h{height}"


def default_overlap(tile_size: int) -> int:
    """The overlap used when none is given: 128 px, or a quarter of a tile smaller than 512 px
    (an overlap must stay below half a tile)."""
    return min(128, tile_size // 4)


class TileGrid:
    def __init__(self, width: int, height: int, tile_size: int = 1024, overlap: int | None = None):
        """overlap None: default_overlap(tile_size)."""
        tile_size = int(tile_size)
        overlap = default_overlap(tile_size) if overlap is None else int(overlap)
        if tile_size < 16:
            raise GeoError(f"tile_size must be at least 16 pixels, got {tile_size}")
        if not 0 <= overlap < tile_size // 2:
            raise GeoError(
                f"overlap must be >= 0 and less than half the tile size ({tile_size // 2}), got {overlap}"
            )
        self.width, self.height = int(width), int(height)
        self.tile_size, self.overlap = tile_size, overlap
        self.row_spans = axis_spans(self.height, tile_size, overlap)
        self.col_spans = axis_spans(self.width, tile_size, overlap)
        self.row_cores = axis_cores(self.row_spans)
        self.col_cores = axis_cores(self.col_spans)
        self._row_cuts = [c[0] for c in self.row_cores]
        self._col_cuts = [c[0] for c in self.col_cores]
        self.tiles = [
            Tile(i, j, r0, c0, r1, c1, (cr0, cc0, cr1, cc1))
            for i, ((r0, r1), (cr0, cr1)) in enumerate(zip(self.row_spans, self.row_cores))
            for j, ((c0, c1), (cc0, cc1)) in enumerate(zip(self.col_spans, self.col_cores))
        ]
        self._by_index = {(t.row, t.col): t for t in self.tiles}

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.row_spans), len(self.col_spans)

    def __len__(self) -> int:
        return len(self.tiles)

    def tile(self, row: int, col: int) -> Tile:
        return self._by_index[(row, col)]

    def cores_in(self, r0: int, c0: int, r1: int, c1: int):
        """Tiles whose cores intersect the pixel box [r0, r1) x [c0, c1)."""
        i0 = max(0, bisect.bisect_right(self._row_cuts, r0) - 1)
        i1 = bisect.bisect_left(self._row_cuts, r1)
        j0 = max(0, bisect.bisect_right(self._col_cuts, c0) - 1)
        j1 = bisect.bisect_left(self._col_cuts, c1)
        for i in range(i0, max(i0 + 1, i1)):
            for j in range(j0, max(j0 + 1, j1)):
                yield self._by_index[(i, j)]

    def neighbour_pairs(self):
        """(tile_a, tile_b, kind) for every pair whose windows overlap ('overlap') or abut along
        a whole side ('contact_rows': a above b; 'contact_cols': a left of b)."""

        def relations(spans):
            # index -> [(other index >= index, relation)] with relation same/overlap/abut
            out = []
            for a, (s0, e0) in enumerate(spans):
                rel = [(a, "same")]
                for b in range(a + 1, len(spans)):
                    s1 = spans[b][0]
                    if s1 < e0:
                        rel.append((b, "overlap"))
                    elif s1 == e0 and b == a + 1:
                        rel.append((b, "abut"))
                    else:
                        break
                out.append(rel)
            return out

        rows, cols = relations(self.row_spans), relations(self.col_spans)
        cols_left = [[] for _ in cols]
        for j, rel in enumerate(cols):
            for k, r in rel:
                if k != j:
                    cols_left[k].append((j, r))
        for a in self.tiles:
            for i, rr in rows[a.row]:
                col_rel = list(cols[a.col])
                if i != a.row:  # the row below: columns to the left count too
                    col_rel += cols_left[a.col]
                for j, cr in col_rel:
                    if (i, j) == (a.row, a.col):
                        continue
                    b = self._by_index[(i, j)]
                    if rr in ("same", "overlap") and cr in ("same", "overlap"):
                        yield a, b, "overlap"
                    elif rr == "abut" and cr == "same":
                        yield a, b, "contact_rows"
                    elif rr == "same" and cr == "abut":
                        yield a, b, "contact_cols"
