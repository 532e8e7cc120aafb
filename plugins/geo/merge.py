"""Joining the pieces of all tiles into objects: match across tile borders as instances.

Two pieces from neighbouring tiles are the same object when they agree where both tiles see
the raster (the overlap of the two windows):

1. *Agreement*: pieces whose parts inside the overlap have IoU >= ``iou_thresh`` are matched,
   greedily from the best IoU, one to one. This joins an object cut by a tile border (both
   tiles see the same part of it in the overlap) and folds an object seen whole by both tiles
   into one, but never joins two neighbours that merely touch (their parts in the overlap do
   not overlap at all).
2. *Agreement up to noise*: two pieces still unmatched whose parts in the overlap each lie
   (>= ``contain_thresh``) inside the other's grown by ``EDGE_TOLERANCE`` pixels are matched
   too: one outline that the two tiles' masks draw a few pixels apart (a small object, or a
   thin strip of one, whose IoU that noise pulls below ``iou_thresh``). A part-mask and its
   whole, or two neighbours, do not lie around each other like that.
3. *Continuation*: a piece cut by its tile's edge towards the other tile whose part in the
   overlap lies (>= ``contain_thresh``, allowing ``EDGE_TOLERANCE`` pixels of disagreement)
   inside one piece of the other tile is joined to it as well, provided it does not overlap
   the pieces already joined to that piece from its own tile. This joins the several arms of
   one object (a U shape) that a tile sees as separate pieces, without absorbing a part-mask
   into its whole. When no piece of the other tile meets it in the overlap, a piece that ends
   within ``EDGE_TOLERANCE`` outside the overlap counts too: the other tile drew the object a
   few pixels smaller, so that its mask stops just short of the overlap, and the cut strip
   would otherwise come out as a sliver beside the object.

Tiles that abut without overlap (``overlap=0``) are matched the same way on the two pixel
lines either side of their common border; there two objects that meet exactly on the border
cannot be told from one object cut by it, which is why the default overlap is not 0.

Matches are joined transitively (union-find). An object's outline is the union, over its
pieces, of each piece's part inside the core of the tile it came from (the tile that saw that
part with most context), plus its parts in cores of tiles that did not see the object at all.
Each part is traced in integer pixel coordinates with its own window's transform, so the
union of parts from different tiles is exact (no slivers) and the result is converted to map
coordinates once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio.features import shapes
from shapely.geometry import shape as to_shape

from .pieces import TileResult
from .tiling import TileGrid

# Pixels by which two tiles' masks of one object may disagree along its outline and still be
# recognised as one object: each tile's mask may be off by 2 px (a model's masks grow or shrink
# with their context), so two of them by 4.
EDGE_TOLERANCE = 4


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Cand:
    gidx: int
    r0: int
    c0: int
    sub: np.ndarray  # bool, the piece inside the comparison frame
    count: int
    truncated: bool
    # the piece inside the frame grown by EDGE_TOLERANCE (as far as its tile sees): what the
    # tolerant matches compare with, since a mask drawn a few pixels smaller may end just
    # outside the frame
    near: "_Cand | None" = None

    @property
    def box(self):
        return self.r0, self.c0, self.r0 + self.sub.shape[0], self.c0 + self.sub.shape[1]


def _inter(a: _Cand, b: _Cand) -> int:
    r0, c0 = max(a.r0, b.r0), max(a.c0, b.c0)
    r1 = min(a.r0 + a.sub.shape[0], b.r0 + b.sub.shape[0])
    c1 = min(a.c0 + a.sub.shape[1], b.c0 + b.sub.shape[1])
    if r1 <= r0 or c1 <= c0:
        return 0
    sa = a.sub[r0 - a.r0:r1 - a.r0, c0 - a.c0:c1 - a.c0]
    sb = b.sub[r0 - b.r0:r1 - b.r0, c0 - b.c0:c1 - b.c0]
    return int(np.count_nonzero(sa & sb))


def _dilated(c: _Cand, pixels: int) -> _Cand:
    """The candidate (its part near the frame) grown by `pixels` in every direction (a square
    structuring element)."""
    import cv2

    c = _near_part(c)
    pad = np.pad(c.sub, pixels).view(np.uint8)
    grown = cv2.dilate(pad, np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)).astype(bool)
    return _Cand(c.gidx, c.r0 - pixels, c.c0 - pixels, grown, int(np.count_nonzero(grown)), c.truncated)


def _near_part(c: _Cand) -> _Cand:
    """The candidate's part near the frame (itself for a border-line candidate)."""
    return c.near if c.near is not None else c


def _near(a: _Cand, b: _Cand, pixels: int) -> bool:
    """Whether the boxes of a and b come within `pixels` of each other."""
    (ar0, ac0, ar1, ac1), (br0, bc0, br1, bc1) = a.box, b.box
    return ar0 < br1 + pixels and br0 < ar1 + pixels and ac0 < bc1 + pixels and bc0 < ac1 + pixels


def match_candidates(cands_a, cands_b, iou_thresh: float = 0.5, contain_thresh: float = 0.9):
    """Edges (gidx_a, gidx_b) between two tiles' candidates in a common frame (see module doc)."""
    if not cands_a or not cands_b:
        return []
    ba = np.array([c.box for c in cands_a])
    bb = np.array([c.box for c in cands_b])
    hit = ((ba[:, None, 0] < bb[None, :, 2]) & (bb[None, :, 0] < ba[:, None, 2])
           & (ba[:, None, 1] < bb[None, :, 3]) & (bb[None, :, 1] < ba[:, None, 3]))
    inter = {}
    for i, j in zip(*np.nonzero(hit)):
        n = _inter(cands_a[i], cands_b[j])
        if n:
            inter[(int(i), int(j))] = n
    edges = []
    # 1. agreement: one-to-one by IoU inside the frame
    scored = []
    for (i, j), n in inter.items():
        iou = n / (cands_a[i].count + cands_b[j].count - n)
        if iou >= iou_thresh:
            scored.append((-iou, i, j))
    scored.sort()
    linked_a: dict[int, list[int]] = {}  # j -> [i, ...] a-pieces joined to b-piece j
    linked_b: dict[int, list[int]] = {}  # i -> [j, ...]
    for _, i, j in scored:
        if i in linked_b or j in linked_a:
            continue
        linked_b[i] = [j]
        linked_a[j] = [i]
        edges.append((cands_a[i].gidx, cands_b[j].gidx))

    # 2. agreement up to the tolerance: pieces that each lie within the other grown by EDGE_TOLERANCE
    # have one outline but for the two masks' noise (a small object, or a cut strip of one, whose
    # IoU that noise pulls below iou_thresh); a part-mask never lies around its whole like that
    for (i, j), _ in sorted(inter.items(), key=lambda kv: (-kv[1], kv[0])):
        if i in linked_b or j in linked_a:
            continue
        a, b = cands_a[i], cands_b[j]
        if (_inter(a, _dilated(b, EDGE_TOLERANCE)) >= contain_thresh * a.count
                and _inter(b, _dilated(a, EDGE_TOLERANCE)) >= contain_thresh * b.count):
            linked_b[i] = [j]
            linked_a[j] = [i]
            edges.append((a.gidx, b.gidx))

    # 3. continuation: a cut piece contained in one piece across the border
    def continuation(cands_x, cands_y, linked_x_of_y, linked_y_of_x, key):
        for i, cx in enumerate(cands_x):
            if i in linked_y_of_x or not cx.truncated or not cx.count:
                continue
            best, best_frac = None, 0.0
            for j in range(len(cands_y)):
                n = inter.get(key(i, j), 0)
                if n and n / cx.count > best_frac:
                    best, best_frac = j, n / cx.count
            if best is not None and best_frac < contain_thresh:
                # the two tiles' masks may disagree by a pixel or two along the outline
                best_frac = _inter(cx, _dilated(cands_y[best], EDGE_TOLERANCE)) / cx.count
            elif best is None:
                # so far that the other tile's mask of the object ends just outside the frame (a
                # piece inside the frame that does not meet this one is another object)
                for j, cy in enumerate(cands_y):
                    if not cy.count and _near(cx, _near_part(cy), EDGE_TOLERANCE):
                        frac = _inter(cx, _dilated(cy, EDGE_TOLERANCE)) / cx.count
                        if frac > best_frac:
                            best, best_frac = j, frac
            if best is None or best_frac < contain_thresh:
                continue
            others = linked_x_of_y.get(best, [])
            if any(_inter(cx, cands_x[k]) > 0.1 * min(cx.count, cands_x[k].count) for k in others):
                continue
            linked_x_of_y.setdefault(best, []).append(i)
            linked_y_of_x[i] = [best]
            edges.append((cx.gidx, cands_y[best].gidx))

    continuation(cands_a, cands_b, linked_a, linked_b, lambda i, j: (i, j))
    continuation(cands_b, cands_a, linked_b, linked_a, lambda i, j: (j, i))
    return edges


def _overlap_cands(res: TileResult, tile, other, frame, base: int):
    """The tile's pieces in the overlap frame; also those that only come within EDGE_TOLERANCE
    of it (count 0: only the tolerant matches use them)."""
    fr0, fc0, fr1, fc1 = frame
    m = EDGE_TOLERANCE
    boxes = res.boxes
    sel = np.flatnonzero((boxes[:, 0] < fr1 + m) & (boxes[:, 2] > fr0 - m)
                         & (boxes[:, 1] < fc1 + m) & (boxes[:, 3] > fc0 - m))
    out = []
    for i in sel:
        r0, c0, r1, c1 = (int(v) for v in boxes[i])
        mask = res.mask(i)
        near = _clipped(mask, r0, c0, (fr0 - m, fc0 - m, fr1 + m, fc1 + m))
        if not near[3]:
            continue
        nr0, nc0, near_sub, near_n = near
        cr0, cc0, sub, n = _clipped(mask, r0, c0, frame)
        truncated = ((other.c1 > tile.c1 and c1 == tile.c1) or (other.c0 < tile.c0 and c0 == tile.c0)
                     or (other.r1 > tile.r1 and r1 == tile.r1) or (other.r0 < tile.r0 and r0 == tile.r0))
        gidx = base + int(i)
        out.append(_Cand(gidx, cr0, cc0, sub, n, truncated,
                         near=_Cand(gidx, nr0, nc0, near_sub, near_n, truncated)))
    return out


def _clipped(mask: np.ndarray, r0: int, c0: int, frame) -> tuple[int, int, np.ndarray, int]:
    """The part of a mask placed at (r0, c0) inside frame (r0, c0, r1, c1): its origin, the
    part (possibly empty) and its pixel count."""
    fr0, fc0, fr1, fc1 = frame
    cr0, cc0 = max(r0, fr0), max(c0, fc0)
    cr1, cc1 = max(cr0, min(r0 + mask.shape[0], fr1)), max(cc0, min(c0 + mask.shape[1], fc1))
    sub = mask[cr0 - r0:cr1 - r0, cc0 - c0:cc1 - c0]
    return cr0, cc0, sub, int(np.count_nonzero(sub))


def _contact_cands(res: TileResult, line: int, axis: int, first: bool, base: int):
    """Pieces touching the border line; their pixels on it as a (len, 1) strip in line coords."""
    boxes = res.boxes
    if axis == 1:  # vertical border at column ``line``
        sel = np.flatnonzero(boxes[:, 1] == line) if first else np.flatnonzero(boxes[:, 3] == line)
    else:
        sel = np.flatnonzero(boxes[:, 0] == line) if first else np.flatnonzero(boxes[:, 2] == line)
    out = []
    for i in sel:
        r0, c0, r1, c1 = (int(v) for v in boxes[i])
        m = res.mask(i)
        if axis == 1:
            strip, start = (m[:, :1] if first else m[:, -1:]), r0
        else:
            strip, start = (m[:1, :].T if first else m[-1:, :].T), c0
        n = int(np.count_nonzero(strip))
        if n:
            out.append(_Cand(base + int(i), start, 0, np.ascontiguousarray(strip), n, True))
    return out


@dataclass
class MergedObject:
    geometry: object  # shapely (Multi)Polygon in global pixel coordinates
    score: float
    stability_score: float
    tile: str
    n_tiles: int
    pieces: int
    class_id: int = -1  # the class most of its pixels were found as (-1: none, segment everything)


def group_pieces(grid: TileGrid, results: dict, iou_thresh: float = 0.5, contain_thresh: float = 0.9):
    """Union-find over all pieces: returns (list of (row, col, index) refs, list of groups)."""
    refs, base = [], {}
    for t in grid.tiles:
        res = results.get((t.row, t.col))
        base[(t.row, t.col)] = len(refs)
        if res is not None:
            refs.extend((t.row, t.col, i) for i in range(len(res)))
    uf = _UnionFind(len(refs))
    for a, b, kind in grid.neighbour_pairs():
        ra, rb = results.get((a.row, a.col)), results.get((b.row, b.col))
        if ra is None or rb is None or not len(ra) or not len(rb):
            continue
        ba, bb = base[(a.row, a.col)], base[(b.row, b.col)]
        if kind == "overlap":
            frame = (max(a.r0, b.r0), max(a.c0, b.c0), min(a.r1, b.r1), min(a.c1, b.c1))
            ca = _overlap_cands(ra, a, b, frame, ba)
            cb = _overlap_cands(rb, b, a, frame, bb)
        elif kind == "contact_cols":
            ca = _contact_cands(ra, a.c1, 1, False, ba)
            cb = _contact_cands(rb, b.c0, 1, True, bb)
        else:
            ca = _contact_cands(ra, a.r1, 0, False, ba)
            cb = _contact_cands(rb, b.r0, 0, True, bb)
        for x, y in match_candidates(ca, cb, iou_thresh, contain_thresh):
            uf.union(x, y)
    groups: dict[int, list[int]] = {}
    for g in range(len(refs)):
        groups.setdefault(uf.find(g), []).append(g)
    return refs, list(groups.values())


def trace(mask: np.ndarray, r0: int, c0: int):
    """Polygons of a cropped mask, traced with its own window transform (global pixel units)."""
    transform = Affine.translation(c0, r0)
    polys = [to_shape(geom) for geom, _ in
             shapes(mask.view(np.uint8), mask=mask, connectivity=4, transform=transform)]
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else shapely.union_all(polys)


def merge_tiles(grid: TileGrid, results: dict, iou_thresh: float = 0.5, contain_thresh: float = 0.9):
    """All tiles' pieces -> list of MergedObject (pixel coordinates), in a deterministic order."""
    refs, groups = group_pieces(grid, results, iou_thresh, contain_thresh)
    objects = []
    for members in groups:
        tiles_in = {refs[g][:2] for g in members}
        parts, weights, metas = [], [], []
        for g in members:
            row, col, i = refs[g]
            res = results[(row, col)]
            r0, c0, r1, c1 = (int(v) for v in res.boxes[i])
            mask = res.mask(i)
            if len(tiles_in) > 1:
                allowed = np.zeros(mask.shape, bool)
                for ct in grid.cores_in(r0, c0, r1, c1):
                    if (ct.row, ct.col) == (row, col) or (ct.row, ct.col) not in tiles_in:
                        kr0, kc0, kr1, kc1 = ct.core
                        allowed[max(kr0, r0) - r0:max(0, min(kr1, r1) - r0),
                                max(kc0, c0) - c0:max(0, min(kc1, c1) - c0)] = True
                mask = mask & allowed
            n = int(np.count_nonzero(mask))
            metas.append((res.scores[i], res.stability[i], grid.tile(row, col).name, int(res.classes[i])))
            weights.append(n)
            if n:
                parts.append(trace(mask, r0, c0))
        if not parts:  # pieces that only lie in each other's cores: keep their plain union
            for g in members:
                row, col, i = refs[g]
                res = results[(row, col)]
                parts.append(trace(res.mask(i), int(res.boxes[i][0]), int(res.boxes[i][1])))
            weights = [1] * len(members)
        geom = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        if len(parts) > 1:
            geom = shapely.simplify(geom, 0)  # drop the collinear vertices left on tile seams
        w = np.asarray(weights, float)
        w = w / w.sum()
        votes: dict[int, float] = {}
        for wi, m in zip(w, metas):
            votes[m[3]] = votes.get(m[3], 0.0) + wi
        objects.append(MergedObject(
            geometry=geom,
            score=float(sum(wi * m[0] for wi, m in zip(w, metas))),
            stability_score=float(sum(wi * m[1] for wi, m in zip(w, metas))),
            tile=metas[int(np.argmax(w))][2],
            n_tiles=len(tiles_in),
            pieces=len(members),
            class_id=max(votes, key=lambda c: (votes[c], -c)),
        ))
    objects.sort(key=lambda o: (o.geometry.bounds[1], o.geometry.bounds[0], -o.geometry.area))
    return objects
