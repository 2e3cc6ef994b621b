"""The embedded store's files as the gateway opened them, and what changed under it since.

SQLite keeps writing through its open file descriptors when a file is deleted or replaced, and
never re-reads the write-ahead log's checksums while it runs: a deleted `-wal` makes every later
commit vanish at the next start, random bytes over the log's frames show up as "database disk
image is malformed" on some later read (or as lost writes at the next start). So the gateway
checks, before each write and at each health poll:
- the store file, `-wal` and `-shm` are the files it opened (same inodes);
- the log's committed frames are the bytes it committed (a crc32 of them, extended after each
  of its commits; the frame count comes from the `-shm` header, SQLite's wal-index).
All calls are made on the engine's one writer thread, so no commit runs between a check's reads.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

WAL_HEADER_BYTES = 32
FRAME_HEADER_BYTES = 24
SHM_MAX_FRAME = struct.Struct("=I")
"""mxFrame, the number of valid frames in the log, at offset 16 of the wal-index header (native order)."""
SHM_MAX_FRAME_OFFSET = 16


class StoreFiles:
    def __init__(self, path: Path, page_size: int) -> None:
        self.path = path
        self.page_size = page_size
        self.inodes: dict[Path, int] = {}
        self.wal_salt = b""
        self.wal_end = 0
        self.wal_crc = 0

    @property
    def wal(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    @property
    def shm(self) -> Path:
        return self.path.with_name(self.path.name + "-shm")

    def files(self) -> dict[Path, str]:
        return {self.path: "index file", self.wal: "write-ahead log", self.shm: "shared-memory index"}

    def seal(self) -> None:
        """Record the files and the log's committed frames: after opening, after each commit."""
        if not self.inodes:
            self.inodes = {path: os.stat(path).st_ino for path in self.files()}
        end = self._committed_end()
        salt = self._salt(end)
        if salt == self.wal_salt and end >= self.wal_end:
            self.wal_crc = _crc(self.wal, self.wal_end, end, self.wal_crc)
        else:  # the log was restarted (all of it checkpointed): new salts, frames from the start
            self.wal_crc = _crc(self.wal, 0, end, 0)
        self.wal_salt, self.wal_end = salt, end

    def problem(self) -> tuple[str, bool] | None:
        """What changed under the gateway since the last seal, in a sentence, and whether the
        acknowledged writes can still be copied into the store file (only the log or its index
        was deleted or replaced: SQLite holds the old ones open); None when nothing changed."""
        for path, what in self.files().items():
            try:
                inode = os.stat(path).st_ino
            except FileNotFoundError:
                inode = None
            if inode != self.inodes.get(path):
                return f"the {what} {path} was deleted or replaced while the gateway ran", path != self.path
        try:
            end = self._committed_end()
            same = self._salt(end) == self.wal_salt and end == self.wal_end
            same = same and _crc(self.wal, 0, end, 0) == self.wal_crc
        except OSError as error:
            return f"the write-ahead log {self.wal} cannot be read ({error.strerror})", False
        if not same:
            return (
                f"the write-ahead log {self.wal} does not hold the frames the gateway committed "
                "(overwritten or damaged while the gateway ran)",
                False,
            )
        return None

    def _committed_end(self) -> int:
        """Bytes of the log that hold committed frames (its header included), per the wal-index."""
        with open(self.shm, "rb") as file:
            header = file.read(SHM_MAX_FRAME_OFFSET + SHM_MAX_FRAME.size)
        if len(header) < SHM_MAX_FRAME_OFFSET + SHM_MAX_FRAME.size:
            return 0
        (frames,) = SHM_MAX_FRAME.unpack_from(header, SHM_MAX_FRAME_OFFSET)
        return WAL_HEADER_BYTES + frames * (FRAME_HEADER_BYTES + self.page_size) if frames else 0

    def _salt(self, end: int) -> bytes:
        if end == 0:
            return b""
        with open(self.wal, "rb") as file:
            return file.read(WAL_HEADER_BYTES)[16:24]


def _crc(path: Path, start: int, end: int, crc: int) -> int:
    """crc32 of bytes start..end of `path`, continuing `crc`; OSError when the file is shorter."""
    if end <= start:
        return crc
    with open(path, "rb") as file:
        file.seek(start)
        left = end - start
        while left > 0:
            chunk = file.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(errno.EIO, "it is shorter than its committed frames")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    return crc
