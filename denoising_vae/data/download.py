"""Downloading NIST's EMNIST archive and trusting only NIST's bytes.

:func:`download_emnist` streams ``gzip.zip`` into place, resumable, and
keeps it only when its MD5 is NIST's; :func:`archive_digests` hashes an
archive once and remembers the digests beside it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import urllib.parse
from pathlib import Path

from ..core import files
from ..core.checks import first_line
from .idx import check_archive

LOGGER = logging.getLogger(__name__)

NIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"

# MD5 of NIST's gzip.zip as torchvision's EMNIST loader pins it; the archive
# cannot be fetched here, so no other digest of it can be pinned honestly.
NIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"

# Connect/read timeouts (s) of a download; ``auto`` probes with a shorter one.
DOWNLOAD_TIMEOUT = (10.0, 60.0)


def download_urls():
    """Addresses tried in order: NIST's current one, then the ``emnist`` package's own list."""
    urls = [NIST_URL]
    try:
        import emnist  # only for its list of mirrors; its parser fails on NumPy >= 2.4

        urls += [url for url in emnist.SOURCE_URLS if url not in urls]
    except ImportError:
        pass
    return urls


def download_emnist(destination, urls=None, timeout=DOWNLOAD_TIMEOUT, probe_timeout=None, expected_md5=None):
    """Download NIST's ``gzip.zip`` to ``destination``, accepting only NIST's bytes; return its path.

    Data go to ``destination + '.part'``; MD5 and SHA-256 are computed while
    the bytes stream in. The archive is renamed into place only when its MD5
    is ``expected_md5`` and it is a zip with the balanced members; its digests
    are then recorded (see :func:`archive_digests`) so later runs trust it
    without hashing it again. A download from an address whose bytes do not
    match is deleted and the next address tried, with both digests in the log.

    An interrupted transfer keeps its ``.part`` file (and ``.part.json``: the
    address and expected size); the next call continues it with an HTTP
    ``Range`` request where the server accepts ranges, and starts again from
    zero where it does not or the address changed.

    Args:
        destination: the archive's final path (parent folders are created).
        urls: addresses to try in order; default :func:`download_urls`.
        timeout: ``(connect, read)`` seconds for each request.
        probe_timeout: if given, first check within this many seconds (name
            lookup included) that some address's host answers at all.
        expected_md5: the digest to accept; default :data:`NIST_MD5`.

    Raises:
        OSError (``ConnectionError``) naming every address tried when none worked.
    """
    import requests

    expected_md5 = (expected_md5 or NIST_MD5).lower()
    destination = Path(destination)
    urls = list(urls) if urls is not None else download_urls()
    if probe_timeout is not None and not any(_host_answers(url, probe_timeout) for url in urls):
        raise ConnectionError(f"no EMNIST download address answered within {probe_timeout:g} s "
                              f"(offline?): {', '.join(urls)}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    failures = []
    for url in urls:
        try:
            md5, sha256 = _fetch(url, partial, timeout, desc=f"EMNIST {destination.name}")
            if md5 != expected_md5:
                LOGGER.warning("%s served an archive with MD5 %s (SHA-256 %s), not NIST's %s; deleted it, "
                               "trying the next address", url, md5, sha256, expected_md5)
                _forget_partial(partial)
                failures.append(f"{url}: MD5 {md5} is not NIST's {expected_md5}")
                continue
            check_archive(partial)
            os.replace(partial, destination)
            _forget_partial(partial)
            _record_digests(destination, md5, sha256)
            LOGGER.info("downloaded EMNIST from %s to %s (MD5 %s verified)", url, destination, md5)
            return destination
        except ValueError as error:  # not a zip with the balanced members: not worth resuming
            _forget_partial(partial)
            failures.append(f"{url}: {first_line(error)}")
        except (OSError, requests.RequestException) as error:  # the .part stays, to be continued
            failures.append(f"{url}: {first_line(error)}")
    raise ConnectionError("could not download EMNIST: " + "; ".join(failures))


def _fetch(url, partial: Path, timeout, desc):
    """Stream ``url`` into ``partial``, continuing it when it came from ``url``; ``(md5, sha256)`` hex digests.

    Raises ``OSError`` when fewer bytes arrive than announced (the partial
    file and its ``.json`` stay for the next call).
    """
    import requests
    from tqdm import tqdm

    meta_path = partial.with_name(partial.name + ".json")
    meta = _read_meta(meta_path)
    have = partial.stat().st_size if partial.is_file() and meta.get("url") == url else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]  # the server sends everything if the file changed
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
        response.raise_for_status()
        length = int(response.headers.get("content-length", 0)) or None
        resumed = have and response.status_code == 206 \
            and response.headers.get("content-range", "").startswith(f"bytes {have}-")
        if resumed:
            _hash_file(partial, md5, sha256)  # the digest covers the bytes kept from before
            LOGGER.info("continuing the EMNIST download from %s at byte %d", url, have)
        else:
            have = 0
        total = have + length if length is not None else None
        validator = response.headers.get("etag") or response.headers.get("last-modified")
        _write_meta(meta_path, {"url": url, "total": total, "validator": validator})
        with open(partial, "ab" if resumed else "wb") as file, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                     disable=None) as progress:
            # Small chunks: a connection that dies loses at most the chunk in flight.
            for chunk in response.iter_content(chunk_size=1 << 16):
                file.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                progress.update(len(chunk))
    size = partial.stat().st_size
    if total is not None and size != total:
        raise OSError(f"got {size} of {total} bytes; the next download continues from there")
    return md5.hexdigest(), sha256.hexdigest()


def _hash_file(path, *digests):
    """Feed the bytes of ``path`` to every hashlib object of ``digests``; return them."""
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            for digest in digests:
                digest.update(block)
    return digests


def _read_meta(path):
    return files.read_json_object(path) or {}


def _write_meta(path, meta):
    try:
        files.write_json(path, meta, indent=None)
    except OSError as error:
        LOGGER.warning("could not write %s (%s); an interrupted download will start again", path, error)


def _forget_partial(partial: Path):
    partial.unlink(missing_ok=True)
    partial.with_name(partial.name + ".json").unlink(missing_ok=True)


def archive_digests(path):
    """``(md5, sha256)`` of an archive file, from its record when size and modification time still match.

    The record, ``<archive>.digests.json``, is written after a verified
    download or the first time an archive is hashed (when the folder is
    writable), so 536 MB are hashed once, not on every run.
    """
    path = Path(path)
    stat = path.stat()
    record = _read_meta(_digest_record(path))
    if record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns \
            and record.get("md5") and record.get("sha256"):
        return record["md5"], record["sha256"]
    md5, sha256 = _hash_file(path, hashlib.md5(), hashlib.sha256())
    _record_digests(path, md5.hexdigest(), sha256.hexdigest())
    return md5.hexdigest(), sha256.hexdigest()


def _digest_record(path):
    return Path(path).with_name(Path(path).name + ".digests.json")


def _record_digests(path, md5, sha256):
    stat = Path(path).stat()
    try:
        files.write_json(_digest_record(path), {"md5": md5, "sha256": sha256, "size": stat.st_size,
                                                "mtime_ns": stat.st_mtime_ns}, indent=None)
    except OSError:
        pass  # a read-only folder: the archive is hashed again next time


def _host_answers(url, timeout) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``timeout`` s.

    Runs in a daemon thread because a name lookup ignores socket timeouts.
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    answered = []

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)
