"""Fine-tuning on a raster and a vector file: the Kampala mosaic with its OSM footprints in a
GeoPackage. The tiles must be the raster's pixels and the objects the footprints (checked
against the chips read independently with rasterio and rasterised with rasterio.features);
bad label files give one error; `samkit geo finetune` writes a checkpoint that
`samkit geo vectorize --model` then uses."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import torch
from geo_helpers import KAMPALA, KAMPALA_LABELS
from rasterio.features import rasterize
from shapely.affinity import translate

from samkit.cli import main
from samkit.finetune import decode_mask
from samkit.geo.errors import GeoError
from samkit.geo.finetune import training_tiles


@pytest.fixture(scope="module")
def footprints_gpkg(geo_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "buildings.gpkg"
    frame = gpd.read_file(geo_dir / KAMPALA_LABELS)
    frame["kind"] = ["house" if i % 3 else "shed" for i in range(len(frame))]
    frame.to_file(path, layer="buildings", driver="GPKG")
    return path


def test_tiles_are_the_chips_and_their_footprints(geo_dir, footprints_gpkg, kampala_chips):
    records = training_tiles(geo_dir / KAMPALA, footprints_gpkg, tile_size=256, class_field="kind")
    chips = {chip.name: chip for chip in kampala_chips}
    assert len(records) == 16  # every 256-px tile of the mosaic holds buildings
    for record in records:
        # "fair_oam_...tif: tile x256y0w256h256" -> the chip r0c1
        window = record.name.rsplit("tile ", 1)[1]
        x, y = int(window[1:window.index("y")]), int(window[window.index("y") + 1:window.index("w")])
        chip = chips[f"r{y // 256}c{x // 256}.png"]
        assert np.array_equal(record.load(), chip.image)
        union = np.zeros((256, 256), bool)
        for obj in record.objects:
            assert obj.label in ("house", "shed") and obj.name.startswith("feature ")
            union |= decode_mask(obj)
        # the chip's footprint parts of 150 px or more are all there, drawn the same
        reference = rasterize(chip.footprints, out_shape=(256, 256)).astype(bool) if chip.footprints else union
        assert (union & reference).sum() / reference.sum() > 0.98
    sheds = training_tiles(geo_dir / KAMPALA, footprints_gpkg, tile_size=256, class_field="kind", classes=["shed"])
    assert {o.label for r in sheds for o in r.objects} == {"shed"}


def test_bad_label_files(geo_dir, footprints_gpkg, tmp_path):
    raster = geo_dir / KAMPALA
    frame = gpd.read_file(footprints_gpkg)
    points = frame.copy()
    points["geometry"] = frame.geometry.representative_point()
    points.to_file(tmp_path / "points.gpkg")
    with pytest.raises(GeoError, match=r"points.gpkg: fine-tuning needs polygons, the file has Point"):
        training_tiles(raster, tmp_path / "points.gpkg")
    far = frame.copy()
    far["geometry"] = [translate(g, 1.0, 1.0) for g in frame.geometry]  # a degree away
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(GeoError, match=r"far.gpkg: no label polygon covers 16 or more pixels"):
        training_tiles(raster, tmp_path / "far.gpkg")
    with pytest.raises(GeoError, match=r"no field 'class'; the fields are: osm_id, kind"):
        training_tiles(raster, footprints_gpkg, class_field="class")
    from samkit import DatasetError

    with pytest.raises(DatasetError, match=r"no object has class barn; the classes there are: house, shed"):
        training_tiles(raster, footprints_gpkg, class_field="kind", classes=["barn"])


def test_geo_finetune_then_vectorize_with_the_tuned_model(geo_dir, footprints_gpkg, mobile_sam_checkpoint, tmp_path,
                                                          capsys):
    raster = str(geo_dir / KAMPALA)
    tuned = tmp_path / "tuned.pt"
    code = main(["geo", "finetune", raster, "--labels", str(footprints_gpkg), "-o", str(tuned),
                 "--model", str(mobile_sam_checkpoint), "--tile-size", "512", "--epochs", "1",
                 # a third of the footprints (the sheds) keeps the run short and goes through the CLI's class filter
                 "--class-field", "kind", "--classes", "shed",
                 "--prompt-iterations", "1", "--val-fraction", "0", "--batch-size", "16", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and f"samkit geo vectorize {raster} --model {tuned}" in out
    # random weights cannot be shown to learn footprints (tests/core/test_finetune_training.py shows
    # learning with a teacher): without validation the trained epoch is what is written
    meta = json.loads(tuned.with_suffix(".json").read_text())
    assert meta["validation"]["best_epoch"] == 1 and meta["data"]["train"]["images"] == 4
    assert set(meta["data"]["train"]["classes"]) == {"shed"}
    saved = torch.load(tuned, map_location="cpu", weights_only=True)
    base = torch.load(mobile_sam_checkpoint, map_location="cpu", weights_only=True)
    assert list(saved) == list(base)
    assert any(not torch.equal(saved[k], base[k]) for k in base if k.startswith("mask_decoder."))
    output = tmp_path / "objects.gpkg"
    code = main(["geo", "vectorize", raster, "--model", str(tuned), "-o", str(output), "--tile-size", "512",
                 "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-thresh", "0", "-q",
                 "--allow-empty"])
    assert code == 0 and output.exists()
    assert "wrote" in capsys.readouterr().out
