"""Fetching task images: auth only where it belongs, personal access tokens, limits, local files."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import ImageServer

import samkit
from samkit.label_studio.errors import ImageFetchError
from samkit.label_studio.images import ImageFetcher, Source, is_personal_access_token


def test_legacy_token_only_to_label_studio(image_server, images_dir):
    fetcher = ImageFetcher()
    ls = Source(url=image_server.url, api_key=image_server.token)
    img = fetcher.get("/private/dog.jpg", ls)
    assert np.array_equal(img, samkit.load_image(images_dir / "dog.jpg"))
    # a redirect to another host (a presigned bucket URL) must not carry Label Studio's key
    image_server.seen_auth.clear()
    fetcher.get(f"{image_server.url}/redirect/bus.jpg", ls)
    assert image_server.seen_auth == [("/echo-auth/bus.jpg", None)]
    # a plain URL on another host (here: another port) gets no key either
    other = ImageServer(images_dir)
    try:
        fetcher.get(f"{other.url}/echo-auth/truck.jpg", ls)
        assert other.seen_auth == [("/echo-auth/truck.jpg", None)]
    finally:
        other.close()


def test_loopback_names_are_one_host(image_server, images_dir):
    """Label Studio known as http://localhost:PORT hands out images as http://127.0.0.1:PORT/...
    (or the other way round): the same host, so they get its key."""
    fetcher = ImageFetcher(cache_bytes=0)
    localhost = image_server.url.replace("127.0.0.1", "localhost")
    for ls_url, image_url in ((localhost, image_server.url), (image_server.url, localhost)):
        img = fetcher.get(f"{image_url}/private/dog.jpg", Source(url=ls_url, api_key=image_server.token))
        assert np.array_equal(img, samkit.load_image(images_dir / "dog.jpg"))
    ipv6 = image_server.url.replace("127.0.0.1", "[::1]")
    assert fetcher._is_label_studio(f"{ipv6}/data/upload/1/a.jpg", Source(url=localhost, api_key="k"))
    # the port still counts, and so does the scheme
    assert not fetcher._is_label_studio("http://localhost:1/x.jpg", Source(url=localhost, api_key="k"))
    assert not fetcher._is_label_studio(localhost.replace("http:", "https:") + "/x.jpg",
                                        Source(url=localhost, api_key="k"))


def test_personal_access_token_is_exchanged_and_reused(image_server):
    assert is_personal_access_token(image_server.pat) and not is_personal_access_token(image_server.token)
    fetcher = ImageFetcher(cache_bytes=0)
    ls = Source(url=image_server.url, api_key=image_server.pat)
    before = image_server.refresh_calls
    fetcher.get("/private/dog.jpg", ls)
    fetcher.get("/private/groceries.jpg", ls)
    assert image_server.refresh_calls == before + 1  # one exchange, the access token is reused
    bad = Source(url=image_server.url, api_key=image_server.pat[:-4] + "AAAA")
    with pytest.raises(ImageFetchError, match="refused the personal access token"):
        fetcher.get("/private/dog.jpg", bad)


def test_downloads_are_cached_by_url(image_server):
    fetcher = ImageFetcher()
    src = Source(url=None, api_key=None)
    a = fetcher.get(f"{image_server.url}/public/picture1.jpg", src)
    b = fetcher.get(f"{image_server.url}/public/picture1.jpg", src)
    assert a is b and fetcher.downloads == 1
    assert not a.flags.writeable  # shared between requests: read-only


def test_image_cache_is_bounded_in_bytes(image_server, make_client):
    """Decoded images are kept up to a byte budget, least recently used out; an image larger
    than the whole budget is used but not kept."""
    src = Source(url=None, api_key=None)
    url = lambda name: f"{image_server.url}/public/{name}"  # noqa: E731
    dog = 534 * 800 * 3  # bytes decoded, as dog.jpg and groceries.jpg
    _, backend = make_client(image_cache_mb=2.5 * dog / 2**20)  # SAMKIT_LS_IMAGE_CACHE_MB
    fetcher = backend.fetcher
    assert fetcher.cache_bytes == int(2.5 * dog)
    a = fetcher.get(url("dog.jpg"), src)
    fetcher.get(url("groceries.jpg"), src)
    assert fetcher.get(url("dog.jpg"), src) is a  # a hit, and now the most recently used
    fetcher.get(url("picture1.jpg"), src)  # 769x770: fits only if the least recently used goes
    info = fetcher.cache_info()
    assert info["bytes"] <= fetcher.cache_bytes and info["bytes"] == sum(v.nbytes for v in fetcher._cache.values())
    assert [k[0] for k in fetcher._cache] == [url("dog.jpg"), url("picture1.jpg")]  # groceries went first
    downloads = fetcher.downloads
    assert fetcher.get(url("dog.jpg"), src) is a and fetcher.downloads == downloads
    big = fetcher.get(url("truck.jpg"), src)  # 1800x1200: over the whole budget
    assert big.shape == (1200, 1800, 3) and big.nbytes > fetcher.cache_bytes
    assert [k[0] for k in fetcher._cache] == [url("picture1.jpg"), url("dog.jpg")]  # not kept, nothing evicted
    assert backend.stats()["image_cache"] == fetcher.cache_info()


def test_data_uri_and_unsupported_refs(images_dir):
    fetcher = ImageFetcher()
    raw = (images_dir / "dog.jpg").read_bytes()
    img = fetcher.get("data:image/jpeg;base64," + base64.b64encode(raw).decode(), Source(None, None))
    assert img.shape == (534, 800, 3)
    for ref, words in [("ftp://host/x.jpg", "cannot fetch"), ("images/x.jpg", "cannot fetch"), ("", "empty"),
                       ("s3://bucket/key.jpg", "LABEL_STUDIO_URL")]:
        with pytest.raises(ImageFetchError, match=words):
            fetcher.get(ref, Source(None, None))


def test_size_limit(image_server):
    fetcher = ImageFetcher(max_bytes=50_000)
    with pytest.raises(ImageFetchError, match="SAMKIT_LS_MAX_IMAGE_MB"):
        fetcher.get(f"{image_server.url}/public/truck.jpg", Source(None, None))


def test_local_files_read_from_disk_when_the_root_is_shared(shared_dir, tmp_path):
    fetcher = ImageFetcher(local_files_root=str(shared_dir / "data"))
    img = fetcher.get("/data/local-files/?d=images/picture2.jpg", Source(None, None))
    assert img.shape == (770, 769, 3)
    assert fetcher.downloads == 0
    with pytest.raises(ImageFetchError, match="outside"):
        fetcher.get("/data/local-files/?d=../../../etc/passwd", Source(None, None))


def test_unreachable_host_is_readable():
    fetcher = ImageFetcher(timeout=2)
    with pytest.raises(ImageFetchError, match="could not download the image http://127.0.0.1:9/"):
        fetcher.get("http://127.0.0.1:9/x.jpg", Source(None, None))


def test_cloud_uri_is_presigned_through_label_studio(image_server, images_dir):
    fetcher = ImageFetcher()
    ls = Source(url=image_server.url, api_key=image_server.pat)
    image_server.seen_auth.clear()
    img = fetcher.get("s3://my-bucket/photos/groceries.jpg", ls, task_id=12)
    assert np.array_equal(img, samkit.load_image(images_dir / "groceries.jpg"))
    assert image_server.presigned[-1] == "s3://my-bucket/photos/groceries.jpg"
    assert image_server.seen_auth == [("/echo-auth/groceries.jpg", None)]  # the bucket never sees the key
    with pytest.raises(ImageFetchError, match="task id"):
        fetcher.get("gs://b/k.jpg", ls, task_id=None)
