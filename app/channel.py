"""Messages between the window and its worker processes: pickled objects over a pair of pipes.

Each message is an 8-byte little-endian length followed by that many bytes of pickle.  Pipes
(the child's stdin and stdout) work the same on Linux, macOS and Windows and need no port, socket
file or authentication key; both ends are our own code, so pickle is safe here.  Qt-free: the
worker processes import this too.
"""
from __future__ import annotations

import pickle
import struct
import threading

_HEADER = struct.Struct("<Q")
MAX_MESSAGE = 1 << 31          # a length beyond this means the stream is out of step: stop reading


class Channel:
    """send() from any thread (one lock per channel); recv() from one reader thread.
    recv raises EOFError once the other side has gone."""

    def __init__(self, rfile, wfile):
        self._r, self._w = rfile, wfile
        self._lock = threading.Lock()

    def send(self, message) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._w.write(_HEADER.pack(len(data)))
            self._w.write(data)
            self._w.flush()

    def recv(self):
        (n,) = _HEADER.unpack(self._read(_HEADER.size))
        if n > MAX_MESSAGE:
            raise EOFError(f"message of {n} bytes: the channel is out of step")
        return pickle.loads(self._read(n))

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self._r.read(left)
            if not chunk:
                raise EOFError("the other side closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        for f in (self._w, self._r):
            try:
                f.close()
            except OSError:
                pass
