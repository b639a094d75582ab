"""Deterministic tar bytes: the exact bytes `tarfile` would write, with every variable header field pinned.

Members are encoded by hand (header from `tarfile.TarInfo.tobuf`, data, NUL padding) rather than through
`tarfile.open(..., "w")`, so the writer knows each shard's final size before it writes a sample, and can hash or
compare the stream as it goes. The result is byte-identical to `tarfile` output for the same members (tested).
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads a closed archive to a multiple of this
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)

TAR_FORMAT = tarfile.PAX_FORMAT  # pure-ASCII names <= 100 bytes produce plain ustar headers
FIXED_MTIME = 0
FIXED_MODE = 0o444


def member_bytes(name: str, data: bytes) -> bytes:
    """Return header + data + padding of one regular-file member with fixed mtime, mode, owner and group."""
    return member_layout(name, data)[0]


def member_layout(name: str, data: bytes) -> tuple[bytes, int]:
    """Return (header + data + padding, offset of the data in those bytes) of one member, as `member_bytes`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = FIXED_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(TAR_FORMAT, "utf-8", "surrogateescape")
    padding = (-len(data)) % BLOCK
    return header + data + b"\0" * padding, len(header)


def archive_tail(payload_size: int) -> bytes:
    """Return the end-of-archive blocks plus the record padding `tarfile` appends after `payload_size` bytes."""
    used = payload_size + len(END_OF_ARCHIVE)
    return END_OF_ARCHIVE + b"\0" * ((-used) % RECORD)


def archive_size(payload_size: int) -> int:
    """Return the final size in bytes of an archive whose members take `payload_size` bytes."""
    return payload_size + len(archive_tail(payload_size))
