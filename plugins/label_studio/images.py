"""Getting a task's image: Label Studio uploads, local-files storage, cloud storage, plain URLs.

Label Studio hands the backend what is in the task's data, which is one of
- `/data/upload/<project>/<file>` (uploaded files): relative to Label Studio, needs its API key;
- `/data/local-files/?d=<path>` (local-files storage): the same, or read straight from disk
  when `LOCAL_FILES_DOCUMENT_ROOT` is set here too;
- `/tasks/<id>/resolve/?fileuri=...` or `/tasks/<id>/presign/?...` (cloud storage proxied or
  presigned by Label Studio): relative, needs the key, redirects to the bucket;
- `s3://`, `gs://`, `azure-blob://` URIs: resolved through Label Studio's presign endpoint;
- plain `http(s)://` URLs (presigned cloud URLs among them): fetched as they are, with Label
  Studio's key only when they point at Label Studio itself;
- `data:image/...;base64,` URIs.

Two kinds of Label Studio API keys work: the legacy token (`Authorization: Token <key>`) and a
personal access token (a JWT refresh token, exchanged at `/api/token/refresh/` for a short-lived
`Authorization: Bearer <access>` token that is renewed when it expires or is refused).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import numpy as np
import requests

from .errors import ImageFetchError, LabelStudioUnreachable

log = logging.getLogger("samkit.label_studio")

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")


@dataclass(frozen=True)
class Source:
    """Where Label Studio is and how to authenticate to it."""

    url: str | None
    api_key: str | None

    @property
    def base(self) -> str | None:
        return self.url.rstrip("/") if self.url else None


def _jwt_exp(token: str) -> float | None:
    """The `exp` claim of a JWT (not verified: only to know when to renew), or None."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def is_personal_access_token(key: str) -> bool:
    """Personal access tokens are JWTs (three dot-separated base64url parts); legacy tokens are hex."""
    parts = key.split(".")
    return len(parts) == 3 and key.startswith("eyJ")


class TokenManager:
    """Authorization headers for a Label Studio API key, refreshing personal access tokens."""

    def __init__(self, timeout: float = 10.0) -> None:
        self._access: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.timeout = timeout
        self.refreshes = 0

    def headers(self, source: Source, session: requests.Session, force_refresh: bool = False) -> dict[str, str]:
        key = source.api_key
        if not key:
            return {}
        if not is_personal_access_token(key):
            return {"Authorization": f"Token {key}"}
        cache_key = (source.base or "", key)
        with self._lock:
            cached = self._access.get(cache_key)
        if cached and not force_refresh and cached[1] > time.time() + 30:
            return {"Authorization": f"Bearer {cached[0]}"}
        if not source.base:
            raise ImageFetchError("a personal access token needs the Label Studio URL to be exchanged "
                                  "for an access token: set LABEL_STUDIO_URL")
        url = f"{source.base}/api/token/refresh/"
        try:
            resp = session.post(url, json={"refresh": key}, timeout=self.timeout)
        except requests.RequestException as e:
            raise LabelStudioUnreachable(
                unreachable_message(source.base, e, "to refresh the personal access token")) from None
        if resp.status_code != 200 or "access" not in _json_or_empty(resp):
            raise ImageFetchError(
                f"Label Studio refused the personal access token at {url} (HTTP {resp.status_code}); "
                "check LABEL_STUDIO_API_KEY (Account & Settings > Personal Access Token) and that "
                "personal access tokens are enabled for the organization")
        access = resp.json()["access"]
        exp = _jwt_exp(access) or time.time() + 240
        with self._lock:
            self._access[cache_key] = (access, exp)
            self.refreshes += 1
        return {"Authorization": f"Bearer {access}"}


def no_answer(exc: requests.RequestException) -> str:
    """Why a request got no answer, in a few words (requests' own message is three nested reprs)."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    text = str(exc)
    for needle, words in (("Connection refused", "connection refused"), ("Failed to resolve", "unknown host name"),
                          ("Name or service not known", "unknown host name"), ("No route to host", "no route to host"),
                          ("Network is unreachable", "network unreachable"), ("CERTIFICATE_VERIFY_FAILED",
                          "its TLS certificate is not trusted"), ("Connection reset", "connection reset"),
                          ("RemoteDisconnected", "connection closed without an answer")):
        if needle in text:
            return words
    return exc.__class__.__name__


def unreachable_message(base: str | None, exc: requests.RequestException, doing: str = "") -> str:
    """One line for a Label Studio that does not answer: its URL, why, and what to check."""
    doing = f" {doing}" if doing else ""
    return (f"cannot reach Label Studio at {base}{doing} ({no_answer(exc)}): check LABEL_STUDIO_URL "
            "(scheme, host and port as the backend's machine sees it) and that Label Studio is running")


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL, with the loopback names as one host: Label Studio at
    http://localhost:8080 serves images as http://127.0.0.1:8080/... (and the other way round)."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # a port that is not a number: no match
        port = -1
    return scheme, "localhost" if host in _LOOPBACK else host, port


def _json_or_empty(resp: requests.Response) -> dict:
    try:
        data = resp.json()
        return data if isinstance(data, dict) else {}
    except ValueError:
        return {}


class ImageFetcher:
    """Downloads and decodes task images, with a cache of decoded images by URL bounded in bytes
    (a 12000x9000 photo decodes to 324 MB: a count of images would bound nothing)."""

    def __init__(self, timeout: float = 30.0, max_bytes: int = 100 * 2**20, cache_bytes: int = 256 * 2**20,
                 local_files_root: str | None = None) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.local_files_root = Path(local_files_root).resolve() if local_files_root else None
        self.tokens = TokenManager(timeout=timeout)
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._cache_lock = threading.Lock()
        self._local = threading.local()
        self.downloads = 0

    # -- public -----------------------------------------------------------------------------
    def get(self, ref: str, source: Source, task_id: int | None = None) -> np.ndarray:
        """The image `ref` (a task data value) as an HxWx3 uint8 RGB array."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageFetchError(f"the task's image reference is empty or not a string: {ref!r}")
        ref = ref.strip()
        cache_key = (ref, source.base, source.api_key)
        with self._cache_lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
        image = self._decode(self._fetch_bytes(ref, source, task_id), ref)
        image.flags.writeable = False
        if image.nbytes > self.cache_bytes:  # used for this request, never kept
            return image
        with self._cache_lock:
            old = self._cache.pop(cache_key, None)  # (another request fetched it meanwhile)
            self.cached_bytes -= old.nbytes if old is not None else 0
            self._cache[cache_key] = image
            self.cached_bytes += image.nbytes
            while self.cached_bytes > self.cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self.cached_bytes -= evicted.nbytes
        return image

    def cache_info(self) -> dict:
        with self._cache_lock:
            return {"items": len(self._cache), "bytes": self.cached_bytes, "max_bytes": self.cache_bytes}

    # -- fetching ---------------------------------------------------------------------------
    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = "samkit-label-studio"
            self._local.session = s
        return s

    def _fetch_bytes(self, ref: str, source: Source, task_id: int | None) -> bytes:
        if ref.startswith("data:"):
            return self._data_uri(ref)
        scheme = urlsplit(ref).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            return self._cloud_uri(ref, source, task_id)
        if scheme in ("http", "https"):
            return self._http(ref, source, with_auth=self._is_label_studio(ref, source))
        if scheme or not ref.startswith("/"):
            raise ImageFetchError(
                f"cannot fetch the image {ref!r}: use an http(s) URL, a Label Studio path (/data/upload/..., "
                f"/data/local-files/?d=...) or a cloud URI ({', '.join(s + '://' for s in CLOUD_SCHEMES)})")
        local = self._local_file(ref)
        if local is not None:
            return local
        if not source.base:
            raise ImageFetchError(
                f"the image {ref!r} is relative to Label Studio, but the backend does not know Label "
                "Studio's URL: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) for the backend, or, after a "
                "backend restart, connect the model again in Label Studio (Settings > Model > Validate and Save)")
        return self._http(urljoin(source.base + "/", ref.lstrip("/")), source, with_auth=True)

    def _is_label_studio(self, url: str, source: Source) -> bool:
        if not source.base:
            return False
        return _origin(url) == _origin(source.base)

    def _local_file(self, ref: str) -> bytes | None:
        """/data/local-files/?d=<path> read from LOCAL_FILES_DOCUMENT_ROOT when that is set here."""
        if self.local_files_root is None or not ref.startswith("/data/local-files"):
            return None
        d = parse_qs(urlsplit(ref).query).get("d")
        if not d:
            return None
        path = (self.local_files_root / unquote(d[0]).lstrip("/")).resolve()
        if self.local_files_root not in path.parents:
            raise ImageFetchError(f"{ref!r} points outside LOCAL_FILES_DOCUMENT_ROOT")
        if not path.is_file():
            return None  # let Label Studio answer (it may have another document root)
        if path.stat().st_size > self.max_bytes:
            raise ImageFetchError(f"the image {path} is larger than the {self.max_bytes // 2**20} MiB limit "
                                  "(SAMKIT_LS_MAX_IMAGE_MB)")
        return path.read_bytes()

    def _cloud_uri(self, uri: str, source: Source, task_id: int | None) -> bytes:
        if not source.base:
            raise ImageFetchError(f"{uri!r} is a cloud storage URI; the backend resolves it through Label "
                                  "Studio, so set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        if task_id is None:
            raise ImageFetchError(f"cannot resolve the cloud URI {uri!r} without the task id")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        url = f"{source.base}/tasks/{task_id}/presign/?fileuri={quote(fileuri)}"
        return self._http(url, source, with_auth=True, shown=uri)

    def _data_uri(self, ref: str) -> bytes:
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise ImageFetchError("only base64 data: URIs are supported for images")
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ImageFetchError(f"the data: URI of the image is not valid base64: {e}") from None

    def _http(self, url: str, source: Source, with_auth: bool, shown: str | None = None) -> bytes:
        shown = shown or url
        headers = self.tokens.headers(source, self.session) if with_auth else {}
        resp = self._get(url, headers, shown)
        if resp.status_code == 401 and with_auth and source.api_key and is_personal_access_token(source.api_key):
            resp.close()  # the access token may have been revoked or expired early: renew once
            headers = self.tokens.headers(source, self.session, force_refresh=True)
            resp = self._get(url, headers, shown)
        with resp:
            if resp.status_code != 200:
                raise ImageFetchError(self._status_message(resp.status_code, shown, with_auth, source))
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > self.max_bytes:
                raise ImageFetchError(f"the image {shown} is {int(length) / 2**20:.1f} MiB, over the "
                                      f"{self.max_bytes // 2**20} MiB limit (SAMKIT_LS_MAX_IMAGE_MB)")
            chunks, total = [], 0
            for chunk in resp.iter_content(1 << 16):
                total += len(chunk)
                if total > self.max_bytes:
                    raise ImageFetchError(f"the image {shown} is over the {self.max_bytes // 2**20} MiB "
                                          "limit (SAMKIT_LS_MAX_IMAGE_MB)")
                chunks.append(chunk)
        self.downloads += 1
        return b"".join(chunks)

    def _get(self, url: str, headers: dict, shown: str) -> requests.Response:
        try:
            # requests drops the Authorization header when a redirect leaves the host (presigned
            # cloud URLs), so the key never reaches a bucket.
            return self.session.get(url, headers=headers, timeout=self.timeout, stream=True, allow_redirects=True)
        except requests.Timeout:
            raise ImageFetchError(f"timed out after {self.timeout:g} s downloading the image {shown}") from None
        except requests.RequestException as e:
            raise ImageFetchError(f"could not download the image {shown}: {no_answer(e)}") from None

    @staticmethod
    def _status_message(status: int, shown: str, with_auth: bool, source: Source) -> str:
        msg = f"could not download the image {shown}: HTTP {status}"
        if status in (401, 403):
            if not with_auth:
                return msg + " (the image host wants credentials the backend does not have)"
            if not source.api_key:
                return msg + (" (Label Studio wants an API key: set LABEL_STUDIO_API_KEY for the backend, "
                              "a legacy token or a personal access token)")
            return msg + " (Label Studio refused the backend's API key: check LABEL_STUDIO_API_KEY)"
        if status == 404:
            return msg + " (not found: was the file deleted or the storage moved?)"
        return msg

    # -- decoding ---------------------------------------------------------------------------
    @staticmethod
    def _decode(data: bytes, shown: str) -> np.ndarray:
        from PIL import Image, ImageOps, UnidentifiedImageError

        import samkit
        from samkit.utils.image_io import too_large_message

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return samkit.load_image(img)
        except UnidentifiedImageError:
            # bytes' repr keeps an HTML error page readable and escapes binary garbage
            raise ImageFetchError(f"{shown} is not an image ({len(data)} bytes starting with {data[:60]!r})") from None
        except Image.DecompressionBombError as e:
            raise ImageFetchError(f"{shown}: {too_large_message(e)}") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageFetchError(f"{shown} could not be decoded as an image: {e}") from None
        except samkit.SamkitError as e:
            raise ImageFetchError(f"{shown}: {e}") from None
