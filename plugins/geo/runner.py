"""Running the tiles: in this process or on a Dask cluster, with a progress bar and per-tile
checkpoints so that an interrupted run resumes where it stopped."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from samkit.errors import OutputError
from samkit.utils.cluster import dask_client
from samkit.utils.files import atomic_output, output_directory
from samkit.utils.prefetch import prefetch

from .errors import GeoError, RemoteReadError
from .pieces import FORMAT_VERSION, TileResult, process_tile, read_tile_pixels, segment_tile
from .raster import gdal_env, open_raster

MANIFEST = "manifest.json"


class TileStore:
    """A directory of per-tile results (``r{row}c{col}.npz``) with a manifest naming the job.

    Results are only reused when the manifest's fingerprint (raster file, bands, nodata,
    stretch, tile grid, segmenter) equals this job's; otherwise the directory is cleared.
    """

    def __init__(self, directory, fingerprint: dict, resume: bool = True):
        self.dir = Path(directory)
        self.fingerprint = dict(fingerprint, format=FORMAT_VERSION)
        try:
            # samkit's rule for outputs: the folder named is made, never the folders above it
            output_directory(self.dir)
        except OutputError as exc:
            raise GeoError(f"checkpoint directory: {exc}") from None
        manifest = self.dir / MANIFEST
        old = None
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError):
                old = None
        self.resumed = bool(resume and old == self.fingerprint)
        if not self.resumed:
            for f in self.dir.glob("r*c*.npz"):
                f.unlink()
            with atomic_output(manifest) as tmp:
                tmp.write_text(json.dumps(self.fingerprint, sort_keys=True))

    def path(self, row: int, col: int) -> Path:
        return self.dir / f"r{row}c{col}.npz"

    def load_done(self, tiles) -> dict:
        done = {}
        if not self.resumed:
            return done
        for t in tiles:
            p = self.path(t.row, t.col)
            if p.exists():
                try:
                    done[(t.row, t.col)] = TileResult.load(str(p))
                except Exception:  # a damaged file is simply recomputed
                    p.unlink(missing_ok=True)
        return done

    def save(self, result: TileResult) -> None:
        result.save(str(self.path(result.row, result.col)))

    def has_results(self) -> bool:
        """Whether any tile result is stored (this run's or a resumed run's)."""
        return any(self.dir.glob("r*c*.npz"))

    def remove(self) -> None:
        """Delete the results, the manifest and their temporary files, then the directory if
        nothing else is in it: a checkpoint_dir the user named may hold files of their own."""
        ours = [*self.dir.glob("r*c*.npz"), *self.dir.glob(".r*c*.tmp-*.npz"), self.dir / MANIFEST,
                *self.dir.glob(".manifest.tmp-*.json")]
        for f in ours:
            f.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:  # not empty (the user's files), or already gone
            pass


def _client(dask):
    """(client, close function) for ``dask``: a Client, a scheduler address, or a number of local
    worker processes (samkit.utils.cluster, shared with auto-annotation)."""
    return dask_client(dask, GeoError)


def run_tiles(grid, spec, generator, *, store: TileStore | None = None, dask=None, progress: bool = True,
              desc: str = "tiles") -> dict:
    """Segment every tile not already in ``store``; returns {(row, col): TileResult}."""
    from tqdm.auto import tqdm

    results = store.load_done(grid.tiles) if store is not None else {}
    pending = [t for t in grid.tiles if (t.row, t.col) not in results]
    client, close = _client(dask) if dask is not None and pending else (None, None)
    bar = tqdm(total=len(grid), initial=len(results), desc=desc, unit="tile", disable=not progress,
               dynamic_ncols=True)

    def done(res):
        if store is not None:
            store.save(res)
        results[(res.row, res.col)] = res
        bar.update(1)
        if res.status == "nodata":
            bar.set_postfix_str("nodata tiles skipped", refresh=False)

    try:
        if client is None and pending:
            with gdal_env():
                reader = open_raster(spec.path)  # used by the prefetching thread alone
            try:
                # the next tile is read (for a remote raster: downloaded) while this one is segmented
                with contextlib.closing(prefetch(pending, lambda t: read_tile_pixels(spec, t, reader))) as tiles:
                    for t, pixels in tiles:
                        done(segment_tile(t, pixels.result(), generator))
            finally:
                reader.close()
        elif client is not None:
            from distributed import as_completed

            try:
                gen = client.scatter(generator, broadcast=True, hash=False)
                futures = [client.submit(process_tile, spec, t, gen, pure=False) for t in pending]
                try:
                    for fut in as_completed(futures):
                        done(fut.result())
                finally:
                    for fut in futures:
                        fut.cancel()
            finally:
                close()
    except RemoteReadError:
        raise  # the network failed, not the input: the stored tiles are what a re-run resumes from
    except GeoError:
        # A tile found the input itself wrong (a damaged raster, a segmenter breaking its
        # contract): what has to change to fix it is part of the job's fingerprint, so no stored
        # result could ever be reused.
        if store is not None:
            store.remove()
        raise
    finally:
        bar.close()
    return results
