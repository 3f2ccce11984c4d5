"""LUO, the Live Update Orchestrator (7.2, ``luo-v5`` over KHO blocks), with memfd.

The ``LUO`` sub-node points at ``struct luo_ser``: the live-update number,
the session block chain (each session names a chain of file records) and the
FLB header.  At early boot the next kernel restores the session chain and
frees ``luo_ser``; file records (memfd-v2: a folio array in a vmalloc area)
are restored when userspace opens ``/dev/liveupdate``.  Sessions are
serialised into their block chains only in ``kernel_kexec``, so a debugfs copy
taken before the jump shows ``sessions_pa = 0``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..abi import structs
from ..abi.structs import KhoVmalloc, cstr, decode_blocks, decode_vmalloc
from ..errors import KhoDecodeError
from ..profiles import EINVAL, ENOENT, ENOMEM, EOPNOTSUPP, PAGE_SHIFT, PAGE_SIZE, Profile, errname
from .base import Client, Quirk
from .common import read_blocks

__all__ = ["LUO_KHO_ENTRY_NAME", "LUO_ABI_COMPATIBLE", "LUO_SER", "LUO_SESSION_SER", "LUO_FILE_SER",
           "LUO_FLB_HEADER", "LUO_FLB_SER", "MEMFD_LUO_SER", "MEMFD_FOLIO_SER", "LuoFile", "LuoSession", "Luo",
           "encode_luo_ser", "decode_luo", "decode_memfd", "LuoClient"]

LUO_KHO_ENTRY_NAME = "LUO"
LUO_ABI_COMPATIBLE = "luo-v5"
LUO_SER = struct.Struct("<8sQQQ")                 # 32 bytes
LUO_SESSION_SER = struct.Struct("<64sQQ")         # 80 bytes
LUO_FILE_SER = struct.Struct("<48sQQ")            # 64 bytes
LUO_FLB_HEADER = struct.Struct("<QQ")
LUO_FLB_SER = struct.Struct("<48sQQ")             # 64 bytes

MEMFD_LUO_SER = struct.Struct("<QQIIQ16s")        # 48 bytes
MEMFD_FOLIO_SER = struct.Struct("<QQ")            # 16 bytes
MEMFD_LUO_FOLIO_DIRTY = 1
MEMFD_LUO_FOLIO_UPTODATE = 2


@dataclass
class LuoFile:
    compatible: str
    data: int
    token: int
    memfd: dict[str, Any] | None = None


@dataclass
class LuoSession:
    name: str
    files_pa: int
    count: int
    files: list[LuoFile] = field(default_factory=list)


@dataclass
class Luo:
    compatible: str
    liveupdate_num: int
    sessions_pa: int
    flbs_pa: int
    sessions: list[LuoSession] = field(default_factory=list)
    flbs: list[dict[str, Any]] = field(default_factory=list)


def encode_luo_ser(liveupdate_num: int, sessions_pa: int, flbs_pa: int) -> bytes:
    return LUO_SER.pack(LUO_ABI_COMPATIBLE.encode(), liveupdate_num, sessions_pa, flbs_pa)


def decode_luo(data: bytes, where: Any = None, mem: Any = None) -> Luo:
    if len(data) < LUO_SER.size:
        raise KhoDecodeError("luo_ser", where, f"{len(data)} bytes, expected {LUO_SER.size}")
    comp, num, spa, fpa = LUO_SER.unpack_from(data)
    luo = Luo(cstr(comp), num, spa, fpa)
    if luo.compatible != LUO_ABI_COMPATIBLE:
        raise KhoDecodeError("luo_ser", where, f"compatible {luo.compatible!r}, expected {LUO_ABI_COMPATIBLE!r}",
                             code="luo-compatible")
    if mem is None:
        return luo
    entries, _ = decode_blocks(mem, spa, LUO_SESSION_SER.size, "luo session block")
    chains: set[int] = set()
    for e in entries:
        name, files_pa, count = LUO_SESSION_SER.unpack(e)
        s = LuoSession(cstr(name), files_pa, count)
        if files_pa and files_pa in chains:
            raise KhoDecodeError("luo_session_ser", files_pa,
                                 f"session {s.name!r} shares its file block chain with an earlier session",
                                 code="luo-shared-chain")
        chains.add(files_pa)
        fentries, _ = decode_blocks(mem, files_pa, LUO_FILE_SER.size, f"luo file block of session {s.name!r}")
        if len(fentries) != count:
            raise KhoDecodeError("luo_session_ser", files_pa,
                                 f"session {s.name!r}: {len(fentries)} file records, count says {count}",
                                 code="luo-count")
        for fe in fentries:
            fcomp, fdata, token = LUO_FILE_SER.unpack(fe)
            f = LuoFile(cstr(fcomp), fdata, token)
            if f.compatible.startswith("memfd-") and fdata:
                try:
                    f.memfd = decode_memfd(mem, fdata, f.compatible)
                except KhoDecodeError as err:
                    f.memfd = {"error": str(err)}
            s.files.append(f)
        luo.sessions.append(s)
    if fpa:
        hdr = mem.read(fpa, 16, "luo_flb_header_ser")
        pgcnt, count = LUO_FLB_HEADER.unpack(hdr)
        cap = (pgcnt * PAGE_SIZE - 16) // LUO_FLB_SER.size if pgcnt < 1024 else 0
        if count > cap:
            raise KhoDecodeError("luo_flb_header_ser", fpa, f"count {count} exceeds {cap} entries of {pgcnt} pages",
                                 code="luo-count")
        raw = mem.read(fpa + 16, count * LUO_FLB_SER.size, "luo_flb_ser")
        for i in range(count):
            n, d, c = LUO_FLB_SER.unpack_from(raw, i * LUO_FLB_SER.size)
            luo.flbs.append({"name": cstr(n), "data": d, "count": c})
    return luo


def decode_memfd(mem: Any, phys: int, compatible: str = "memfd-v2", cap: int = 1 << 20) -> dict[str, Any]:
    raw = mem.read(phys, MEMFD_LUO_SER.size, "memfd_luo_ser")
    pos, size, seals, flags, nr, folios = MEMFD_LUO_SER.unpack(raw)
    vm = KhoVmalloc.unpack(folios, phys + 32)
    out: dict[str, Any] = {"pos": pos, "size": size, "seals": seals, "flags": flags, "nr_folios": nr, "folios": []}
    if nr:
        if nr > cap:
            raise KhoDecodeError("memfd_luo_ser", phys, f"nr_folios {nr} over {cap}", code="memfd-count")
        blocks, _ = decode_vmalloc(mem, vm, phys + 32)
        need = nr * MEMFD_FOLIO_SER.size
        arr = read_blocks(mem, blocks, PAGE_SIZE << vm.order, need, "memfd folio array")
        if len(arr) < need:
            raise KhoDecodeError("memfd folio array", vm.first, f"{len(arr)} bytes for {nr} folios",
                                 code="memfd-count")
        for i in range(nr):
            w, index = MEMFD_FOLIO_SER.unpack_from(arr, 16 * i)
            out["folios"].append({"pfn": w & ((1 << 52) - 1), "flags": w >> 52, "index": index})
    return out


class _KernelReads:
    """Memory as a client's kernel code reads it (``KernelAPI.read_preserved``)."""

    def __init__(self, k: Any):
        self.k = k

    def read(self, phys: int, length: int, what: str = "") -> bytes:
        return bytes(self.k.read_preserved(phys, length, what or "luo block"))

    def contains(self, phys: int, size: int = 1) -> bool:
        """The kernel checks nothing before it reads: a fault is the read's own (an oops)."""
        return True

    def ranges(self) -> list[tuple[int, int]]:
        return []               # the kernel knows no extent of what it may read

    def read_u64(self, phys: int, what: str = "") -> int:
        return int.from_bytes(self.read(phys, 8, what), "little")


def _strncmp_equal(a: bytes, b: bytes) -> bool:
    """``strncmp(a, b, len(a)) == 0``: equal up to the first NUL."""
    for x, y in zip(a, b.ljust(len(a), b"\0")):
        if x != y:
            return False
        if x == 0:
            return True
    return True


class LuoClient(Client):
    node = LUO_KHO_ENTRY_NAME
    kind = "luo"
    fuzz_family = "luo"
    model_name = "luo"

    @classmethod
    def decode(cls, blob: bytes, mem: Any, where: Any, profile: Profile | None = None) -> dict[str, Any]:
        luo = decode_luo(blob, where, mem)
        return {"kind": cls.kind, "compatible": luo.compatible, "liveupdate_num": luo.liveupdate_num,
                "sessions_pa": luo.sessions_pa, "flbs_pa": luo.flbs_pa,
                "sessions": [{"name": s.name, "files": [
                    {"compatible": f.compatible, "token": f.token, "data": f.data, "memfd": f.memfd}
                    for f in s.files]} for s in luo.sessions],
                "flbs": luo.flbs}

    @classmethod
    def describe(cls, dec: dict[str, Any]) -> list[str]:
        lines = [f"LUO {dec['compatible']}, liveupdate number {dec['liveupdate_num']}, "
                 f"{len(dec['sessions'])} sessions, {len(dec['flbs'])} FLBs"]
        for s in dec["sessions"]:
            for fl in s["files"]:
                extra = ""
                if fl.get("memfd") and "size" in fl["memfd"]:
                    extra = f", memfd size {fl['memfd']['size']}, {fl['memfd']['nr_folios']} folios"
                lines.append(f"  session {s['name']!r}: {fl['compatible']} token 0x{fl['token']:x}{extra}")
        return lines

    @classmethod
    def quirks(cls, blob: bytes | None, direction: str, have_memory: bool) -> list[Quirk]:
        if blob is None or have_memory:
            return []
        try:
            luo = decode_luo(blob)
        except KhoDecodeError:
            if direction == "in":
                return [Quirk("debugfs-luo-freed",
                              "in/sub_fdts/LUO does not decode: LUO frees the incoming luo_ser page during "
                              "early init while debugfs keeps pointing at it; the real bytes are in the "
                              "previous kernel's memory at the jump")]
            return []
        if direction == "out" and luo.sessions_pa == 0:
            return [Quirk("debugfs-luo-not-serialized",
                          "out/sub_fdts/LUO has sessions_pa = 0: LUO serialises its sessions only in "
                          "kernel_kexec(), so only memory captured at the jump shows them")]
        return []

    @classmethod
    def expected_difference(cls, debugfs_copy: bytes, in_memory: bytes) -> Quirk | None:
        # only sessions_pa (bytes 16..24) is written in kernel_kexec, after a
        # debugfs copy taken before the jump
        if len(debugfs_copy) >= LUO_SER.size and debugfs_copy[:16] == in_memory[:16] and \
                debugfs_copy[24:] == in_memory[24:]:
            was, now = int.from_bytes(debugfs_copy[16:24], "little"), int.from_bytes(in_memory[16:24], "little")
            return Quirk("debugfs-luo-not-serialized",
                         f"out/sub_fdts/LUO has sessions_pa = 0x{was:x}, memory at the jump 0x{now:x}: LUO "
                         "serialises its sessions only in kernel_kexec(), after the copy was taken")
        return None

    def __init__(self, kernel: Any):
        super().__init__(kernel)
        self.enabled_cmdline = False
        self.ser_phys = 0
        self.num_in = 0
        self.sessions: list[dict[str, Any]] = []       # outgoing: name, files [(token, memfd phys)]
        self.incoming: list[LuoSession] = []          # decoded incoming sessions

    def enabled(self) -> bool:
        return self.k.p.luo

    # ------------------------------------------------------------ kernel code
    def early_initcall(self) -> None:
        """``liveupdate_early_init``: read the incoming luo_ser, restore the
        session block chain, free the luo_ser page."""
        k = self.k
        from ..abi.cmdline import kstrtobool
        self.enabled_cmdline = bool(kstrtobool(k.params.get("liveupdate", "")) or False)
        if not k.kho_enable:
            if self.enabled_cmdline:
                k.printk("luo: Disabling liveupdate because KHO is disabled")
            self.enabled_cmdline = False
            return
        err, phys, size = k.retrieve_subtree(self.node)
        if err:
            if err != -ENOENT:
                k.printk(f"luo: failed to retrieve LUO state 'LUO' from KHO: {errname(err)}")
                self.fail(err, f"kho_retrieve_subtree returned {err}")
            return
        if (size or 0) < LUO_SER.size:
            k.printk(f"luo: LUO state is too small ({size} < {LUO_SER.size})")
            return self.fail(-EINVAL, "luo_ser is too small")
        raw = k.read_preserved(phys, LUO_SER.size, "luo_ser")
        if not _strncmp_equal(raw[:8], LUO_ABI_COMPATIBLE.encode()):
            k.printk(f"luo: LUO state is incompatible with '{LUO_ABI_COMPATIBLE}'")
            return self.fail(-EINVAL, "luo_ser compatible mismatch")
        _comp, num, sessions_pa, flbs_pa = LUO_SER.unpack_from(raw)
        self.num_in = num
        k.printk(f"luo: Retrieved live update data, liveupdate number: {num}")
        # luo_session_setup_incoming: only the session block chain is
        # restored now (kho_block_set_restore); sessions and their file
        # chains are deserialised on the first open of /dev/liveupdate,
        # where a failure is -EIO to userspace, not a panic
        try:
            # the chain is read through phys_to_virt: a block outside the direct map faults
            _entries, pages = structs.decode_blocks(_KernelReads(k), sessions_pa, LUO_SESSION_SER.size,
                                                    "luo session block")
        except KhoDecodeError as e:
            k.printk(f"luo: {e.message.split(' (')[0]}")
            k.restore_folio(phys)
            return self.fail(-EINVAL, e.message)
        for p_ in pages:
            k.restore_folio(p_)
        try:
            self.incoming = decode_luo(raw, phys, k.mem).sessions
        except KhoDecodeError as e:
            self.detail = f"sessions do not deserialise (first open of /dev/liveupdate returns -EIO): {e.message}"
        k.restore_folio(phys)                     # kho_restore_free(luo_ser)
        self.status, self.restored = "sessions restored", True
        self.flbs_pa_in = flbs_pa                 # luo_flb_setup_incoming: kept, not checked

    def fail(self, err: int, why: str) -> None:
        """``luo_restore_fail`` is ``panic()``: the boot ends here."""
        self.enabled_cmdline = False
        self.status, self.detail, self.restored = "restore failed", why, False
        self.k.panic("The incoming tree failed to initialize properly "
                     f"[{errname(err)}], disabling live update")

    def late_initcall(self) -> None:
        """``luo_state_setup``: this kernel's luo_ser and FLB header.  LUO
        stays enabled when KHO was disabled after its early init (kho_init's
        error path): then the preservation fails and says so."""
        k = self.k
        if not self.enabled_cmdline:
            return
        phys = k.alloc_preserve(LUO_SER.size, "luo_ser")
        flb = k.alloc_preserve(PAGE_SIZE, "luo flb header")
        if not phys or not flb:
            k.printk("luo: failed to allocate/preserve LUO state memory")
            return
        k.mem.write(flb, struct.pack("<QQ", 1, 0))
        k.mem.write(phys, encode_luo_ser(self.num_in + 1, 0, flb))
        self.ser_phys = phys
        k.add_subtree(self.node, phys, LUO_SER.size)

    #: CONFIG_LIVEUPDATE_TEST's FLBs, looked up when memfd registers its handler
    TEST_FLBS = tuple(f"liveupdate-test-flb-v{i}".encode() for i in range(3))

    def after_late(self) -> None:
        """``memfd_luo_init`` (a late initcall of mm/, after LUO's and
        reserve_mem's): registering the memfd handler makes the liveupdate
        test look up its three FLBs in the incoming FLB array
        (luo_flb_retrieve_one): the header's count, then every entry's name
        compared with strcmp until one matches, all through phys_to_virt.
        7.2.13 faults there when flbs_pa points outside RAM, or when the
        array's page was reused and its count is garbage."""
        k = self.k
        fpa = getattr(self, "flbs_pa_in", 0)
        if not fpa or not self.enabled_cmdline or not k.kho_enable:
            return
        count = int.from_bytes(k.read_preserved(fpa, LUO_FLB_HEADER.size, "luo FLB header")[8:16], "little")
        base = fpa + LUO_FLB_HEADER.size
        for compat in self.TEST_FLBS:
            self._flb_find(base, count, compat)

    def _flb_find(self, base: int, count: int, compat: bytes) -> int:
        """The index of the entry named ``compat`` (strcmp), or -1; reads as
        the kernel does, so an entry outside the direct map faults."""
        k = self.k
        want = compat + b"\0"
        step, chunk = LUO_FLB_SER.size, 256
        j = 0
        while j < count:
            n = min(chunk, count - j)
            try:
                raw = k.read_preserved(base + j * step, n * step, "luo FLB entries")
            except Exception:
                # find the first entry whose first byte faults: read one by one
                for i in range(j, j + n):
                    name = k.read_preserved(base + i * step, 1, "luo FLB entry")
                    if name[:1] == want[:1] and k.read_preserved(base + i * step, len(want), "luo FLB entry") == want:
                        return i
                j += n
                continue
            for i in range(n):
                if raw[i * step:i * step + len(want)] == want:
                    return j + i
            j += n
        return -1

    def preserve_memfd(self, session: str, token: int, content: bytes) -> int:
        """A session with one memfd (memfd-v2): the folio, its folio array in
        vmalloc memory, the memfd_luo_ser, all preserved."""
        k = self.k
        if not self.ser_phys:
            return -EOPNOTSUPP
        folio = k.alloc_pages(0)
        if not folio:
            return -ENOMEM
        k.mem.write(folio, content[:PAGE_SIZE])
        k.preserve_folio(folio, 0, f"memfd {session}")
        arr = k.alloc_pages(0)
        k.mem.write(arr, struct.pack("<QQ", (folio >> PAGE_SHIFT) | (3 << 52), 0))
        desc = k.preserve_vmalloc([arr], f"memfd {session} folios")
        ser = k.alloc_preserve(MEMFD_LUO_SER.size, f"memfd {session}")
        if desc is None or not ser:
            return -ENOMEM
        k.mem.write(ser, MEMFD_LUO_SER.pack(0, len(content), 1, 0, 1, desc.pack()))
        self.sessions.append({"name": session, "files": [(token, ser)]})
        return 0

    def reboot(self) -> None:
        """``liveupdate_reboot`` from kernel_kexec: serialise sessions into
        KHO block chains and point luo_ser at them."""
        k = self.k
        if not self.enabled_cmdline or not self.ser_phys or not self.sessions:
            return

        def page() -> int:
            return k.alloc_preserve(PAGE_SIZE, "luo block")
        sess = []
        for s_ in self.sessions:
            files = [LUO_FILE_SER.pack(b"memfd-v2", ser, tok) for tok, ser in s_["files"]]
            head, _ = structs.encode_blocks(k.mem, page, files, LUO_FILE_SER.size)
            sess.append(LUO_SESSION_SER.pack(s_["name"].encode(), head, len(files)))
        head, _ = structs.encode_blocks(k.mem, page, sess, LUO_SESSION_SER.size)
        k.mem.write_u64(self.ser_phys + 16, head)
