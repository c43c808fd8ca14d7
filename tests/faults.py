"""A loopback TCP proxy that fails on purpose: faults injected at the network level, below every client."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class FaultProxy:
    """A loopback TCP proxy in front of ``upstream`` that can, per connection, cut (RST) it or hold the server's
    data once a byte threshold is crossed, or die altogether (listener and every connection closed)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.cut_up_after: int | None = None  # client→server bytes on one connection
        self.cut_down_after: int | None = None  # server→client bytes on one connection
        self.cuts_left: int | None = None  # None: cut every connection that crosses the threshold
        self.hold_down_after: int | None = None  # one connection's server→client data is held, once
        self.held = threading.Event()
        self.release = threading.Event()
        self.die_after_up: int | None = None  # total client→server bytes after which the proxy dies
        self.up_total = 0
        self.cut_count = 0
        self.max_down = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.dead = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            counts = {"up": 0, "down": 0}
            threading.Thread(target=self._pump, args=(client, server, counts, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, counts, "down"), daemon=True).start()

    def _should_cut(self, counts: dict[str, int], direction: str) -> bool:
        limit = self.cut_up_after if direction == "up" else self.cut_down_after
        if limit is None or counts[direction] <= limit:
            return False
        with self._lock:
            if self.cuts_left is not None:
                if self.cuts_left <= 0:
                    return False
                self.cuts_left -= 1
            self.cut_count += 1
        return True

    def _pump(self, src: socket.socket, dst: socket.socket, counts: dict[str, int], direction: str) -> None:
        held = False
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            counts[direction] += len(data)
            if direction == "up":
                with self._lock:
                    self.up_total += len(data)
                if self.die_after_up is not None and self.up_total > self.die_after_up:
                    self.kill()
                    return
            else:
                self.max_down = max(self.max_down, counts["down"])
                if (
                    not held
                    and self.hold_down_after is not None
                    and counts["down"] > self.hold_down_after
                    and not self.held.is_set()
                ):
                    held = True
                    self.held.set()
                    self.release.wait(30)
            if self._should_cut(counts, direction):
                self._reset(src)
                self._reset(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # shutdown() wakes a thread blocked in recv() on it (close() alone would not); linger 0 makes it a reset
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def kill(self) -> None:
        """The server dies: no more connections, and every open one is reset."""
        self.dead = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            self._reset(sock)
