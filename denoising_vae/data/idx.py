"""Reading NIST's EMNIST archive: the IDX format inside its ``gzip.zip``, capitals only, upright.

:func:`read_emnist_capitals` reads one split of EMNIST *balanced* (Cohen et
al. 2017) from NIST's ``gzip.zip`` or a folder of its ``.gz`` members,
without extracting anything to disk; :func:`parse_idx` decodes LeCun's IDX
format. A damaged or hostile archive (wrong magic, truncated, a "gzip
bomb") ends in a one-line ``ValueError``, never a huge allocation.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..core.checks import first_line
from ..core.constants import FIRST_CAPITAL_LABEL, IMAGE_SIZE, LETTERS

# No EMNIST split has more images (byclass train: 697,932): an IDX header
# declaring more is damaged or hostile, and bounds how far a member may inflate.
MAX_IDX_ITEMS = 1_000_000

MEMBER_TEMPLATE = "gzip/emnist-balanced-{usage}-{kind}-idx{dims}-ubyte.gz"


def _members(usage):
    return (MEMBER_TEMPLATE.format(usage=usage, kind="images", dims=3),
            MEMBER_TEMPLATE.format(usage=usage, kind="labels", dims=1))


def check_archive(path):
    """Raise ValueError unless ``path`` is a zip holding the four balanced members."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a zip archive ({error})") from None
    missing = [m for usage in ("train", "test") for m in _members(usage) if m not in names]
    if missing:
        raise ValueError(f"archive {path} lacks {missing[0]}: expected NIST's gzip.zip layout "
                         "with the four gzip/emnist-balanced-*-ubyte.gz members")


def _read_member(archive: Path, member: str, ndim: int) -> bytes:
    """The decompressed bytes of one ``.gz`` IDX member (``ndim`` dimensions), from a zip or a folder.

    Nothing is extracted to disk, and only the expected member names are
    opened. Inflation streams and stops as soon as the output exceeds what
    the member's IDX header declares (a "gzip bomb" never fills memory).
    """
    where = f"{member} in {archive}"
    try:
        if archive.is_dir():
            candidates = [archive / member, archive / Path(member).name]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"folder {archive} lacks {Path(member).name}: expected the four "
                                        "emnist-balanced-*-ubyte.gz files of NIST's gzip.zip")
            with open(found, "rb") as stream:
                return _inflate_idx(stream, str(found), ndim)
        with zipfile.ZipFile(archive) as zipped:
            if member not in zipped.namelist():
                raise ValueError(f"archive {archive} lacks {member}: expected NIST's gzip.zip layout "
                                 "with the four gzip/emnist-balanced-*-ubyte.gz members")
            with zipped.open(member) as stream:
                return _inflate_idx(stream, where, ndim)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive} is not a readable zip archive ({error}): "
                         "delete it and download NIST's gzip.zip again") from None
    except (EOFError, zlib.error) as error:
        raise ValueError(f"{where} is not a complete gzip file ({first_line(error)}): "
                         "delete the archive and download NIST's gzip.zip again") from None


def _inflate_idx(stream, where, ndim, piece=1 << 20):
    """Inflate a gzip stream of an IDX file, at most ``piece`` bytes of output at a time, never
    beyond the size its header declares (header + item count x item size)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    header_size = 4 + 4 * ndim
    parts, produced, bound = [], 0, None
    pending = b""
    while not inflater.eof:
        if not pending:
            pending = stream.read(1 << 16)
            if not pending:
                raise ValueError(f"{where} is not a complete gzip file (it ends early): "
                                 "delete the archive and download NIST's gzip.zip again")
        out = inflater.decompress(pending, piece)
        pending = inflater.unconsumed_tail
        parts.append(out)
        produced += len(out)
        if bound is None and produced >= header_size:
            bound = _declared_size(b"".join(parts)[:header_size], where, ndim)
        if bound is not None and produced > bound:
            raise ValueError(f"{where} inflates beyond the {bound:,} bytes its IDX header declares: "
                             "the archive is damaged or hostile; delete it and download NIST's gzip.zip again")
    return b"".join(parts)


def _declared_size(header, where, ndim):
    """Bytes an IDX file with this header may hold; a one-line error for an impossible header."""
    if header[:2] != b"\0\0" or header[2] != 0x08 or header[3] != ndim:
        parse_idx(header, (None,) * ndim, where)  # raises its one-line error naming the wrong magic
    shape = [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if shape[0] > MAX_IDX_ITEMS:
        raise ValueError(f"{where} declares {shape[0]:,} items, more than any EMNIST split "
                         f"({MAX_IDX_ITEMS:,}): the archive is damaged or hostile")
    return len(header) + math.prod(shape)


def parse_idx(data: bytes, expected_dims, where="IDX data"):
    """Decode an unsigned-byte IDX file (LeCun's MNIST format) into a uint8 array.

    Header: two zero bytes, type code 0x08 (ubyte), the number of dimensions,
    then each dimension as a big-endian uint32.

    Args:
        data: the file's bytes.
        expected_dims: required shape with ``None`` for the free count, e.g.
            ``(None, 28, 28)``.
        where: the file's name, for error messages.
    """
    ndim = len(expected_dims)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise ValueError(f"{where} has IDX magic {data[:4].hex() or 'missing'}: expected 000008{ndim:02x} "
                         f"(unsigned bytes, {ndim} dimensions); the file is not what its name says")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{where} is truncated inside its IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if any(e is not None and e != s for e, s in zip(expected_dims, shape)):
        raise ValueError(f"{where} holds arrays of shape {shape}: expected {tuple(expected_dims)}".replace(
            "None", "N"))
    size = int(np.prod(shape))
    if len(data) - header != size:
        raise ValueError(f"{where} has {len(data) - header} data bytes: its header announces {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_emnist_capitals(archive, usage):
    """Read one split of EMNIST balanced capitals from NIST's archive.

    Args:
        archive: NIST's ``gzip.zip`` or a folder holding its ``.gz`` files.
        usage: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 (N, 28, 28) upright, int64 (N,) in 0-25.
    """
    archive = Path(archive)
    images_member, labels_member = _members(usage)
    images = parse_idx(_read_member(archive, images_member, 3), (None, IMAGE_SIZE, IMAGE_SIZE),
                       where=f"{images_member} in {archive}")
    labels = parse_idx(_read_member(archive, labels_member, 1), (None,), where=f"{labels_member} in {archive}")
    if len(images) != len(labels):
        raise ValueError(f"{archive}: {usage} split has {len(images)} images but {len(labels)} labels; "
                         "expected equal counts: the archive is damaged, download it again")
    keep = (labels >= FIRST_CAPITAL_LABEL) & (labels < FIRST_CAPITAL_LABEL + len(LETTERS))
    # NIST stores each image transposed (column-major); swap the axes to make letters upright.
    upright = np.ascontiguousarray(images[keep].transpose(0, 2, 1))
    return upright, labels[keep].astype(np.int64) - FIRST_CAPITAL_LABEL
