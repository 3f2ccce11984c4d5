"""Just enough of the gdb remote serial protocol to drive QEMU's gdbstub.

Software breakpoints (``Z0``/``z0``), stop replies, register reads (x86_64
numbering), guest-physical reads and writes (``Qqemu.PhyMemMode``), and
:func:`reconnect` for a link that dropped while QEMU runs on (QEMU pauses the
guest on a new connection and forgets every breakpoint).
"""
from __future__ import annotations

import socket
import time

__all__ = ["REG_RDI", "REG_RIP", "Gdb", "GdbExited", "arm", "reconnect"]

#: x86_64 register numbers of the gdb remote protocol
REG_RDI = 5
REG_RIP = 16


class GdbExited(Exception):
    pass


class Gdb:
    """Just enough of the gdb remote serial protocol for QEMU's gdbstub."""

    def __init__(self, port: int, timeout: float = 30):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self.sock.settimeout(None)
        self.request("qSupported:swbreak+")
        # QEMU answers '?' with the stop reason; it also pauses the guest on a
        # new connection and drops every breakpoint
        self.halt_reason = self.request("?")

    def _fill(self, timeout: float | None):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:     # socket.timeout
            raise TimeoutError from None
        if not chunk:
            raise GdbExited("gdbstub connection closed")
        self.buf += chunk

    def _read_packet(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.time() + timeout
        while True:
            # drop acks and anything before a packet start
            i = self.buf.find(b"$")
            if i < 0:
                self.buf = b""
            else:
                self.buf = self.buf[i:]
                j = self.buf.find(b"#")
                if j >= 0 and len(self.buf) >= j + 3:
                    data = self.buf[1:j]
                    self.buf = self.buf[j + 3:]
                    self.sock.sendall(b"+")
                    return data.decode("latin-1")
            left = None if deadline is None else max(0.0, deadline - time.time())
            if left == 0.0:
                raise TimeoutError
            self._fill(left)

    def send(self, data: str):
        cs = sum(data.encode("latin-1")) & 0xFF
        self.sock.sendall(f"${data}#{cs:02x}".encode("latin-1"))

    def request(self, data: str, timeout: float = 60) -> str:
        self.send(data)
        return self._read_packet(timeout)

    def wait_stop(self, timeout: float | None) -> str:
        """Wait for a stop reply (T../S..) or exit (W../X..)."""
        while True:
            r = self._read_packet(timeout)
            if r and r[0] in "TSWX":
                return r
            # 'O' console output packets and the like are ignored

    def read_reg(self, num: int) -> int:
        """A register of the stopped vCPU (x86_64 numbering: 5 = rdi, 16 = rip)."""
        r = self.request(f"p{num:x}")
        if r and not r.startswith("E"):
            return int.from_bytes(bytes.fromhex(r), "little")
        # QEMU 7.2 has no 'p': read them all ('g': rax..r15, then rip; 8 bytes each)
        g = bytes.fromhex(self.request("g"))
        if len(g) < 8 * (num + 1) or num > 16:
            raise RuntimeError(f"gdbstub cannot read register {num}")
        return int.from_bytes(g[8 * num:8 * num + 8], "little")

    def phys_mode(self, on: bool):
        r = self.request(f"Qqemu.PhyMemMode:{1 if on else 0}")
        if r != "OK":
            raise RuntimeError(f"gdbstub refused Qqemu.PhyMemMode: {r!r}")

    def write_phys(self, addr: int, data: bytes, chunk: int = 1024):
        self.phys_mode(True)
        try:
            for off in range(0, len(data), chunk):
                part = data[off:off + chunk]
                r = self.request(f"M{addr + off:x},{len(part):x}:{part.hex()}")
                if r != "OK":
                    raise RuntimeError(f"gdbstub M at {addr + off:#x}: {r!r}")
        finally:
            self.phys_mode(False)

    def read_phys(self, addr: int, length: int, chunk: int = 1024) -> bytes:
        self.phys_mode(True)
        out = bytearray()
        try:
            for off in range(0, length, chunk):
                n = min(chunk, length - off)
                r = self.request(f"m{addr + off:x},{n:x}")
                if r.startswith("E") and len(r) == 3:
                    raise RuntimeError(f"gdbstub m at {addr + off:#x}: {r!r}")
                out += bytes.fromhex(r)
        finally:
            self.phys_mode(False)
        return bytes(out)

    def set_breakpoint(self, addr: int) -> bool:
        """Arm a software breakpoint; True when the stub accepted it."""
        return self.request(f"Z0,{addr:x},1") == "OK"

    def clear_breakpoint(self, addr: int) -> bool:
        return self.request(f"z0,{addr:x},1") == "OK"

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def arm(gdb: Gdb, breakpoints: list[tuple[int, str]], suffix: str = "") -> None:
    """Arm ``breakpoints`` ([(addr, what), ...]); a refusal raises RuntimeError
    "gdbstub refused the <what><suffix>"."""
    for addr, what in breakpoints:
        if not gdb.set_breakpoint(addr):
            raise RuntimeError(f"gdbstub refused the {what}{suffix}")


def reconnect(port: int, breakpoints: list[tuple[int, str]], timeout: float = 10) -> Gdb:
    """Connect to the gdbstub again and arm ``breakpoints`` again (QEMU dropped
    them with the old link).  The new link's ``halt_reason`` tells why the
    guest is paused."""
    gdb = Gdb(port, timeout=timeout)
    arm(gdb, breakpoints, " after reconnecting")
    return gdb
