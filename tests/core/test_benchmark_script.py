"""The benchmark script runs end to end (a miniature run: MobileSAM, tiny prompt counts, a 4x4
grid, 10 interactive calls: the fewest that give a p10-p90 spread, 16 points in the bf16 mask
check) and its checks report agreement with the official package. Timings are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from samkit.build import cpu_has_bfloat16_dot_products

REPO = Path(__file__).resolve().parents[2]


def test_bench_core_miniature_run(tmp_path, mobile_sam_checkpoint, images_dir):
    table = tmp_path / "results.md"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_core.py"), "--model", "mobile_sam",
        "--checkpoint", str(mobile_sam_checkpoint), "--image", str(images_dir / "dog.jpg"),
        "--repeats", "1", "--prompts", "1", "5", "--points-per-side", "4", "--thresholds-zero",
        "--interactive-repeats", "10", "--mask-points", "16", "--markdown", str(table),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = table.read_text()
    for stage in ("image encoder", "decoder, 1 prompt", "decoder, 5 prompts", "one prompt, 3 masks",
                  "masks bf16 vs fp32", "MaskGenerator, default params", "MaskGenerator, thresholds 0"):
        assert stage in text, stage
    rows = [line for line in text.splitlines() if line.startswith("| MobileSAM")]
    decoder_rows = [r for r in rows if "| decoder," in r]
    assert decoder_rows
    for row in decoder_rows:  # a logit within float rounding of 0 may flip one pixel
        equal = float(re.search(r"([0-9.]+)% low-res pixels equal", row).group(1))
        assert equal >= 99.99, row
    mask_rows = [r for r in rows if "mask IoU vs official" in r]
    assert len(mask_rows) == 2, rows  # one prompt's 3 masks, and a click's best mask
    for row in mask_rows:  # OpenCV's upscaling: float32 rounding may flip a pixel near logit 0
        differ, size = (int(v) for v in re.search(r"\((\d+) of (\d+) pixels differ\)", row).groups())
        assert differ <= size * 1e-4, row
    # the click repeated alone gives the same mask; the interactive rows show the VM's drift
    repeated = [r for r in rows if "one click, repeated" in r]
    assert len(repeated) == 1 and "same mask as the click above: True" in repeated[0], rows
    interactive = [r for r in rows if "one click" in r or "decoder, 1 prompt" in r or "one prompt, 3 masks" in r]
    assert len(interactive) == 4 and all(re.search(r"p10-p90 [0-9.]+-[0-9.]+ ms", r) for r in interactive), interactive
    generator_rows = [r for r in rows if "MaskGenerator" in r and "| fp32 |" in r]
    assert generator_rows and all("same masks" in r for r in generator_rows)


def run_bench_onnx(tmp_path, images_dir, *options: str) -> str:
    """bench_onnx.py on dog.jpg with one repeat and `options`; its markdown."""
    table = tmp_path / "onnx.md"
    command = [sys.executable, str(REPO / "benchmarks" / "bench_onnx.py"), "--image", str(images_dir / "dog.jpg"),
               "--repeats", "1", "--markdown", str(table), *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = table.read_text()
    assert "Machine at start:" in text and "L3" in text
    return text


def assert_onnx_rows(rows: list[str], stages: list[str], minimum_iou: dict[str, float]) -> None:
    """The rows' stages, the click rows' mask IoU against samkit's at least `minimum_iou` per
    side, and the encoder row's embedding within float32 rounding of samkit's."""
    assert [row.split(" | ")[1] for row in rows] == stages, rows
    for row in rows[1:]:
        for name, minimum in minimum_iou.items():
            values = re.search(name + r" IoU ([0-9./]+)", row).group(1).split("/")
            assert values and all(float(v) >= minimum for v in values), row
    assert re.search(r"embedding max abs diff [0-9.]+e-0[5-9]", rows[0]), rows[0]


def test_bench_onnx_miniature_run(tmp_path, mobile_sam_checkpoint, images_dir):
    """bench_onnx.py on an existing MobileSAM export (one repeat): every row is there and its
    checks show the ONNX masks agreeing with samkit's (fp32 to IoU 0.999, int8 to 0.95)."""
    try:
        from . import onnx_exports
    except ImportError:
        import onnx_exports

    text = run_bench_onnx(tmp_path, images_dir, "--export-dir", str(onnx_exports.mobile_export(mobile_sam_checkpoint)))
    rows = [line for line in text.splitlines() if line.startswith("| mobile_sam")]
    assert_onnx_rows(rows, ["image encoder (once per image)", "one click, 3 masks at 800x534",
                            "one click, best mask only", "official ONNX usage: 4 masks upscaled in the graph"],
                     {"fp32": 0.999, "int8": 0.95})


def test_bench_onnx_sam2_miniature_run(tmp_path, images_dir):
    """bench_onnx.py --model sam2.1_hiera_tiny (exports the perturbed SAM 2.1-T, one repeat): the
    encoder and click rows against the official sam2 predictor; no SAM 1 ONNX-example row."""
    text = run_bench_onnx(tmp_path, images_dir, "--model", "sam2.1_hiera_tiny")
    rows = [line for line in text.splitlines() if line.startswith("| sam2.1_hiera_tiny")]
    assert_onnx_rows(rows, ["image encoder (once per image)", "one click, 3 masks at 800x534",
                            "one click, best mask only"], {"official": 0.999, "fp32": 0.999, "int8": 0.9})


def test_bench_sam2_miniature_run(tmp_path, images_dir):
    """bench_sam2.py --quick (Hiera-T, a 4x4 grid, a 512-px GIS raster with MobileSAM and SAM
    2.1-T) with 16 prompts: every row is there, and its checks show samkit agreeing with the
    official sam2 (same embedding, same click masks, same low-res logits, the same generator
    masks) and the reduced precision's masks with fp32's."""
    table = tmp_path / "sam2.md"
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_sam2.py"), "--quick", "--image", str(images_dir / "dog.jpg"),
        "--prompts", "16", "--markdown", str(table),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    check_sam2_table(table.read_text())


def check_sam2_table(text: str) -> None:
    """The assertions on bench_sam2.py --quick's markdown."""
    assert "Machine at start:" in text and "L3" in text and "avx" in text
    rows = [line for line in text.splitlines() if line.startswith("| SAM 2.1-T") or line.startswith("| MobileSAM")]
    stages = [(row.split(" | ")[0][2:], row.split(" | ")[1], row.split(" | ")[2]) for row in rows]
    for precision in ("fp32", "bf16"):
        assert ("SAM 2.1-T", "encoder (set_image)", precision) in stages, stages
    embedding = next(r for r in rows if "| encoder (set_image) | fp32" in r)
    found = re.search(r"embedding max abs diff ([0-9.e+-]+) \(max ([0-9.]+)\)", embedding)
    diff, scale = float(found.group(1)), float(found.group(2))
    assert diff <= 1e-5 * scale, embedding
    low = next(r for r in rows if "| encoder (set_image) | bf16" in r)
    assert float(re.search(r"IoU mean ([0-9.]+)", low).group(1)) >= 0.9, low
    clicks = [r for r in rows if "one click, best mask" in r]
    # fp32, and the Label Studio backend's default click precision where that is another
    precisions = ["fp32"] + (["bf16 decoder"] if cpu_has_bfloat16_dot_products() else [])
    expected = [(model, precision) for model in ("SAM 2.1-T", "MobileSAM") for precision in precisions]
    assert [(r.split(" | ")[0][2:], r.split(" | ")[2]) for r in clicks] == expected, clicks
    for row in clicks:
        assert re.search(r"ours p50 [0-9.]+ ms, p90 [0-9.]+ ms", row), row
        assert "1 thread(s)" in row, row  # the backend's CPU default
        exact = "| fp32 |" in row
        assert float(re.search(r"mask IoU vs official ([0-9.]+)", row).group(1)) >= (0.999 if exact else 0.98), row
        if not exact:
            assert float(re.search(r"mask IoU vs our fp32 ([0-9.]+)", row).group(1)) >= 0.98, row
    prompts = next(r for r in rows if "decoder, 16 prompts (low-res)" in r)
    assert float(re.search(r"([0-9.]+)% low-res pixels equal", prompts).group(1)) >= 99.99, prompts
    generator = next(r for r in rows if "segment-everything 4x4" in r)
    assert "same masks" in generator, generator
    gis = [line.split(" | ") for line in text.splitlines() if re.match(r"\| (MobileSAM|SAM 2.1-T) \| 512x", line)]
    assert [(cells[0][2:], cells[1]) for cells in gis] == [
        ("MobileSAM", "512x512"), ("SAM 2.1-T", "512x512"), ("MobileSAM", "512x256")], gis
    for cells in gis:  # megapixels per minute, peak RSS
        assert float(cells[2]) > 0 and float(cells[5].split()[0]) > 0, cells
