"""Text prompts in the GIS adapter: `samkit geo vectorize RASTER --text ... --det-model ...`.

The detector is the small OWLv2 with seeded random weights (tests/text_models.py, built through
the real transformers classes and PIL processor; no pretrained weights exist here), SAM the
seeded MobileSAM. What is checked is the wiring: the detector runs on each tile, its boxes (in
the tile's pixels) are SAM's prompts, the masks come out as polygons at the right place in the
raster, labelled with the phrases, merged across tiles as segment-everything's objects are.
The expected masks are computed here independently: read each tile, detect, SAM on the boxes.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import text_models
from geo_helpers import KAMPALA
from rasterio.features import rasterize

import samkit
import samkit.geo as sg
from samkit.annotate.detectors import DetectOptions, finalize, load_detector
from samkit.geo import GeoError
from samkit.geo.raster import prepare, read_tile
from samkit.geo.tiling import TileGrid

TEXT = "building. tree."
CONF = 0.52  # the seeded OWLv2's scores spread around 0.5: a few boxes per tile


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    return str(text_models.owlv2(tmp_path_factory.mktemp("text-models") / "owlv2-test"))


@pytest.fixture(scope="module")
def sam(mobile_sam_checkpoint):
    # given to vectorize too: its embedding cache spares the reference a second encoder run per tile
    return samkit.Predictor(samkit.get_model(str(mobile_sam_checkpoint), "cpu"), cache_size=8)


@pytest.fixture(scope="module")
def strip(geo_dir, tmp_path_factory):
    """The Kampala scene's top 1024 x 600 pixels, georeferenced: two tiles of 600 side by side."""
    from rasterio.windows import Window

    out = tmp_path_factory.mktemp("strip") / "strip.tif"
    with rasterio.open(geo_dir / KAMPALA) as ds:
        window = Window(0, 0, 1024, 600)
        profile = dict(ds.profile, width=1024, height=600, transform=ds.window_transform(window))
        data = ds.read(window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return str(out)


def expected_pieces(raster, tile_size, overlap, owlv2, sam):
    """Per tile: [(global mask (H, W) bool, label)] from the tile's own detection and SAM, and the grid."""
    ds, spec, _, _ = prepare(raster)
    grid = TileGrid(ds.width, ds.height, tile_size=tile_size, overlap=overlap)
    detector = load_detector(owlv2, TEXT, DetectOptions(conf=CONF))
    out = {}
    for tile in grid.tiles:
        image, valid = read_tile(ds, spec, tile.window)
        height, width = image.shape[:2]
        dets, _ = finalize(detector.detect(image, None), detector, width, height)
        sam.set_image(image)
        masks, _, _ = sam.predict_batch(boxes=dets.boxes, multimask_output=False)
        pieces = []
        for mask, c in zip(masks[:, 0], dets.class_ids):
            full = np.zeros((ds.height, ds.width), bool)
            full[tile.r0:tile.r0 + height, tile.c0:tile.c0 + width] = mask & valid
            if full.any():
                pieces.append((full, detector.names[int(c)]))
        out[tile] = pieces
    ds.close()
    return out, grid


def burn(geometries, shape):
    return rasterize(((g, 1) for g in geometries), out_shape=shape, dtype="uint8").astype(bool)


def test_one_tile_objects_are_sams_masks_of_the_detector_boxes(geo_dir, owlv2, sam):
    raster = str(geo_dir / KAMPALA)
    gdf = sg.vectorize(raster, text=TEXT, det_model=owlv2, box_threshold=CONF, model=sam, tile_size=1024,
                       pixel_space=True, progress=False)
    pieces, _ = expected_pieces(raster, 1024, None, owlv2, sam)
    [want] = pieces.values()
    assert len(gdf) == len(want) >= 2
    assert list(gdf.columns[:2]) == ["id", "label"] and set(gdf["label"]) <= {"building", "tree"}
    unmatched = list(want)
    for geom, label in zip(gdf.geometry, gdf["label"]):
        got = burn([geom], (1024, 1024))
        scores = [(np.logical_and(got, m).sum() / np.logical_or(got, m).sum(), k) for k, (m, lab) in
                  enumerate(unmatched) if lab == label]
        best, k = max(scores)
        assert best >= 0.99
        unmatched.pop(k)
    assert not unmatched


def test_tiles_detect_on_their_own_pixels_and_objects_merge_across_tiles(strip, owlv2, sam):
    """Two tiles: every output pixel is a pixel of some tile's mask (so the boxes reached SAM in
    the tile's own frame and the masks went back to the right place), every mask pixel in its own
    tile's core is in the output, and objects cut by a seam come out once, not per tile."""
    gdf = sg.vectorize(strip, text=TEXT, det_model=owlv2, box_threshold=CONF, model=sam, tile_size=600,
                       overlap=176, pixel_space=True, progress=False)
    check_two_tiles(gdf, strip, owlv2, sam)


def test_text_run_on_dask_workers(strip, owlv2, sam, mobile_sam_checkpoint):
    """The segmenter travels to a Dask worker (its detector and SAM load there) and gives the same."""
    gdf = sg.vectorize(strip, text=TEXT, det_model=owlv2, box_threshold=CONF, model=str(mobile_sam_checkpoint),
                       device="cpu", tile_size=600, overlap=176, pixel_space=True, progress=False, dask=1)
    check_two_tiles(gdf, strip, owlv2, sam)


def check_two_tiles(gdf, strip, owlv2, sam):
    pieces, grid = expected_pieces(strip, 600, 176, owlv2, sam)
    assert len(grid) == 2
    shape = (600, 1024)
    anywhere = np.zeros(shape, bool)  # B: every piece
    in_core = np.zeros(shape, bool)  # A: every piece within its own tile's core
    for tile, found in pieces.items():
        r0, c0, r1, c1 = tile.core
        for mask, _ in found:
            anywhere |= mask
            in_core[r0:r1, c0:c1] |= mask[r0:r1, c0:c1]
    got = burn(gdf.geometry, shape)
    assert got.any() and not (got & ~anywhere).any()
    assert not (in_core & ~got).any()
    assert len(set(gdf["tile"])) == 2  # both tiles' objects are there
    pieces_total = sum(len(v) for v in pieces.values())
    assert (gdf["n_tiles"] > 1).any() and len(gdf) < pieces_total  # some objects were joined across a seam
    assert set(gdf["label"]) <= {"building", "tree"}


def cli(*argv):
    from samkit.cli import main

    return main(list(argv))


def test_cli_writes_labelled_polygons_in_the_rasters_crs(geo_dir, owlv2, mobile_sam_checkpoint, tmp_path, capsys):
    out = tmp_path / "buildings.gpkg"
    rc = cli("geo", "vectorize", str(geo_dir / KAMPALA), "--text", "building", "--det-model", owlv2,
             "--box-threshold", str(CONF), "--model", str(mobile_sam_checkpoint), "--device", "cpu",
             "--tile-size", "1024", "-o", str(out), "-q")
    assert rc == 0
    gdf = gpd.read_file(out)
    with rasterio.open(geo_dir / KAMPALA) as ds:
        assert gdf.crs.to_epsg() == ds.crs.to_epsg() == 3857
        bounds = ds.bounds
    assert len(gdf) >= 1 and set(gdf["label"]) == {"building"}
    minx, miny, maxx, maxy = gdf.total_bounds
    assert minx >= bounds.left and maxx <= bounds.right and miny >= bounds.bottom and maxy <= bounds.top
    assert "polygon(s)" in capsys.readouterr().out


def test_offline_model_id_is_one_line_and_nothing_is_written(geo_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "buildings.gpkg"
    rc = cli("geo", "vectorize", str(geo_dir / KAMPALA), "--text", "building", "-o", str(out), "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("samkit: error:")
    assert "IDEA-Research/grounding-dino-tiny" in err[0] and "--det-model path/to/grounding-dino-tiny" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_bad_text_arguments_are_one_line(geo_dir, owlv2, tmp_path, capsys):
    raster = str(geo_dir / KAMPALA)
    rc = cli("geo", "vectorize", raster, "--det-model", owlv2, "-o", str(tmp_path / "a.gpkg"), "-q")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--text" in err[0]
    with pytest.raises(GeoError, match="prompts or text"):
        sg.vectorize(raster, text="building", prompts={"points": [[0, 0]], "crs": "raster"})
    with pytest.raises(GeoError, match="names no class"):
        sg.vectorize(raster, text=" . ", det_model=owlv2)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_of_a_text_run_keep_the_classes(tmp_path):
    """The per-tile files (what a resumed run reads) carry each piece's class."""
    from samkit.geo.pieces import TileResult

    tile = TileGrid(64, 64, tile_size=64).tiles[0]
    result = TileResult.from_masks(tile, [(np.ones((2, 3), bool), (1, 2), 0.5, 0.9, 1),
                                          (np.ones((4, 4), bool), (5, 5), 0.7, 0.8, 0)])
    result.save(str(tmp_path / "t.npz"))
    back = TileResult.load(str(tmp_path / "t.npz"))
    assert back.classes.tolist() == [1, 0] and back.mask(0).shape == (2, 3)
    assert json.dumps(back.classes.tolist())
