"""Images stored as members of an uncompressed tar file (img2dataset's webdataset shards), read in place.

Instead of extracting every image of a shard to a file, processdata_03's img2dataset importer names each one by a
pseudo path that the pipeline carries in `image_path` like any file path:

    <absolute path of the .tar file>::<member name>
    e.g. /data/laion/00012.tar::000120034.jpg

`nbutils.data.images.load_rgb` decodes such a path from the member's bytes, read at their offset in the tar
(`embedded_bytes`), and `splits.clean_captions` finds it present when the tar exists and has that member. Each
tar's member index is built once per process with `tarfile` and kept until the tar changes on disk, so a cache
build over a shard of ten thousand images reads its headers once. The file part ends at the first ".tar::", and no
image file is named like that.
"""

from __future__ import annotations

import functools
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import DataError

BLOCK = 512  # tar's block size: every header and every member's padded data
OPEN_TARS = 8  # member indexes kept per process (a shard of 10,000 images indexes in about 3 MB)

# The tar part ends at the first ".tar::"; the rest is the member's name inside the tar.
MEMBER = re.compile(r"^(?P<file>.+?\.tar)::(?P<member>.+)$")


# ----------------------------------------------------------------------------- the pseudo path


def member_path(tar: str | os.PathLike, member: str) -> str:
    """The pseudo path of `member` (its name as the tar lists it) of the tar file `tar`."""
    return f"{os.path.abspath(tar)}::{_normal(member)}"


def parse_embedded(path) -> tuple[str, str] | None:
    """(tar file, member name) of a pseudo path; None for anything else (a file path, a file object)."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    text = os.fspath(path)
    m = MEMBER.match(text) if isinstance(text, str) and ".tar::" in text else None
    return (m["file"], _normal(m["member"])) if m else None


def is_embedded(path) -> bool:
    """True when `path` is a tar member's pseudo path (see the module docstring)."""
    return parse_embedded(path) is not None


def embedded_bytes(path: str) -> bytes:
    """The bytes of a tar member's pseudo path, read at their offset. Raises FileNotFoundError naming the tar and
    the member when either is missing, DataError when the tar cannot be read."""
    tar, member = _parse(path)
    if not os.path.isfile(tar):
        raise FileNotFoundError(f"{path}: tar file {tar} not found")
    index = member_index(tar)
    if member not in index.members:
        hint = f"; {index.damage}: download the shard again" if index.damage else ""
        raise FileNotFoundError(f"{path}: {tar} has no member {member!r}{hint}")
    offset, size = index.members[member]
    with open(tar, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:  # the tar shrank between its stamp and this read
        raise DataError(f"{path}: {tar} ends inside member {member!r}: download the shard again")
    return data


def embedded_exists(path: str) -> bool:
    """True when the tar of a pseudo path exists and has its member, whole."""
    tar, member = _parse(path)
    try:
        return os.path.isfile(tar) and member in member_index(tar).members
    except DataError:  # a tar that cannot be read holds no members that can be
        return False


def _parse(path) -> tuple[str, str]:
    parsed = parse_embedded(path)
    if parsed is None:
        raise ValueError(f"{path!r} is not a tar member path (<file>.tar::<member name>)")
    return parsed


def _normal(name: str) -> str:
    """A member name as the index keys it: "./000000001.jpg" -> "000000001.jpg"."""
    return str(PurePosixPath(name))


# ----------------------------------------------------------------------------- the member index


@dataclass(frozen=True)
class MemberIndex:
    """Where each regular-file member's bytes lie in one tar: {name: (offset, size)}, in tar order.

    `damage` is "" for a whole tar, else what is wrong ("ends inside member '000000002.jpg'"); members whose
    bytes lie past the end of the file are left out of `members`.
    """

    members: dict[str, tuple[int, int]]
    damage: str = ""


def member_index(tar: str | os.PathLike) -> MemberIndex:
    """The member index of an uncompressed tar, built on first use and kept until the file changes on disk."""
    tar = os.fspath(tar)
    try:
        st = os.stat(tar)
    except OSError as e:
        raise DataError(f"{tar}: cannot open ({e.strerror})") from None
    return _member_index(tar, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=OPEN_TARS)
def _member_index(tar: str, size: int, mtime: int) -> MemberIndex:
    members: dict[str, tuple[int, int]] = {}
    damage, end = "", 0
    try:
        # "r:" reads uncompressed tars only: a member of a compressed tar has no offset to read it at.
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                end = info.offset_data + -(-info.size // BLOCK) * BLOCK
                if not info.isfile():
                    continue
                if info.offset_data + info.size > size:
                    damage = f"the tar ends inside member {info.name!r} (truncated at {size:,} bytes)"
                    break
                members[_normal(info.name)] = (info.offset_data, info.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(
            f"{tar}: not a readable uncompressed tar ({e}): download or write the shard again"
        ) from None
    if not damage and members and not _ends_with_zero_block(tar, end):
        # tarfile stops quietly at a cut or garbled header after the first one: a whole tar ends in zero blocks.
        damage = f"the tar breaks off after byte {end:,} (truncated or damaged)"
    return MemberIndex(members, damage)


def _ends_with_zero_block(tar: str, end: int) -> bool:
    with open(tar, "rb") as f:
        f.seek(end)
        return f.read(BLOCK) == bytes(BLOCK)
