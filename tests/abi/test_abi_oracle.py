"""The ABI layer against bytes and log lines of a real Linux 7.2.13 kernel."""


import pytest

from conftest import oracle, reserve_lines
from helpers import A, B
from pykho import clients
from pykho import profiles as P
from pykho.abi import fdt as F
from pykho.abi import radix, root, structs
from pykho.memory import SparseDir

CASES = {c.name: c.root_fdt for c in (A, B)}       # scenario: root FDT phys (tests/helpers.py)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    name = request.param
    mem = SparseDir(oracle(name, "ram-stage1.sparse.tar.xz"))
    return name, mem, CASES[name]


def test_root_fdt_from_memory_is_the_next_kernels_in_fdt(case, read):
    name, mem, phys = case
    blob = root.read_root_from_memory(mem, phys)
    assert blob == read(name, "ram-stage1-out-fdt-full.dtb")
    assert blob == read(name, "stage2-debugfs", "kho", "in", "fdt")


def test_radix_walk_equals_next_kernel_reservations(case, read):
    name, mem, phys = case
    r = root.decode_root(root.read_root_from_memory(mem, phys))
    assert r.compatible == "kho-v4" and r.mem_map_len == 8
    walk = radix.RadixWalk(mem, r.mem_map, strict=True)
    got = list(walk.blocks())
    expected = reserve_lines(read(name, "stage2-dmesg.txt", mode="r"))
    assert len(expected) > 0
    assert got == expected            # same set, same order as the kernel's walk


def test_radix_nodes_match_host_decoder(case, read):
    import json
    name, mem, phys = case
    ref = json.loads(read(name, "decode-stage1.json"))
    r = root.decode_root(root.read_root_from_memory(mem, phys))
    walk = radix.RadixWalk(mem, r.mem_map, strict=True)
    list(walk.blocks())
    # every node the host decoder found, in the order of the walk (depth first), at its level
    assert [(n.level, n.phys) for n in walk.nodes] == [(n["level"], n["phys"]) for n in ref["radix_nodes"]]
    assert len(walk.nodes) == {"A-selftest": 44, "B-luo-memblock-chain": 21}[name]


def test_subtrees_and_blobs(case, read):
    name, mem, phys = case
    r = root.decode_root(root.read_root_from_memory(mem, phys))
    md_st = r.subtree("kexec-metadata")
    md = structs.decode_kexec_metadata(mem.read(md_st.phys, md_st.size))
    assert md == structs.KexecMetadata(1, "7.2.13", 1)
    # the raw struct re-encodes to the same 73 bytes
    assert md.pack() == mem.read(md_st.phys, 73)
    assert mem.read(md_st.phys, 73) == read(name, "stage1-debugfs", "kho", "out", "sub_fdts", "kexec-metadata")
    t_st = r.subtree("kho_test")
    t = clients.decode_kho_test(mem.read(t_st.phys, t_st.size), mem=mem)
    assert t.folios_info.flags == structs.KHO_VMALLOC_ALLOC
    assert len(t.folios) == t.nr_folios
    # every test_kho folio is in the preserved map with its order
    blocks = set(radix.walk(mem, r.mem_map))
    assert all((p, o) in blocks for p, o in t.folios)


def test_kho_test_checksum_over_real_folio_data(read):
    mem = SparseDir(oracle("B-luo-memblock-chain", "ram-stage1.sparse.tar.xz"))
    r = root.decode_root(root.read_root_from_memory(mem, B.root_fdt))
    st = r.subtree("kho_test")
    t = clients.decode_kho_test(mem.read(st.phys, st.size), mem=mem)
    csum = 0
    for p, o in t.folios:
        csum = clients.csum_partial(mem.read(p, 4096 << o), csum)
    assert csum == t.csum == 0x13E6A837


def test_luo_sessions_and_memfd(read):
    mem = SparseDir(oracle("B-luo-memblock-chain", "ram-stage1.sparse.tar.xz"))
    r = root.decode_root(root.read_root_from_memory(mem, B.root_fdt))
    st = r.subtree("LUO")
    luo = clients.decode_luo(mem.read(st.phys, st.size), mem=mem)
    assert (luo.compatible, luo.liveupdate_num) == ("luo-v5", 1)
    names = [s.name for s in luo.sessions]
    assert names == ["kexec_simple_state", "test-session"]
    f = luo.sessions[1].files[0]
    assert (f.compatible, f.token) == ("memfd-v2", 0x1A)
    folio = f.memfd["folios"][0]
    assert folio["pfn"] == 0x17BD
    assert mem.read(folio["pfn"] << 12, 17) == b"hello kexec world"
    # debugfs read before the reboot: sessions not serialized yet (quirk 4)
    early = clients.decode_luo(read("B-luo-memblock-chain", "stage1-debugfs", "kho", "out", "sub_fdts", "LUO"))
    assert early.sessions_pa == 0 and luo.sessions_pa == 0xA01000


def test_memblock_blob_encodes_byte_exact(read):
    real = read("B-luo-memblock-chain", "stage1-debugfs", "kho", "out", "sub_fdts", "memblock")
    regions = clients.decode_memblock(real)
    assert regions == [clients.ReserveMem("oracle_rmem", B.extra["oracle_rmem"], 0x400000)]
    blob, err = clients.encode_memblock(regions)
    assert err == 0 and blob == real


def test_kho_test_blob_encodes_byte_exact(read):
    real = read("A-selftest", "stage1-debugfs", "kho", "out", "sub_fdts", "kho_test")
    t = clients.decode_kho_test(real)
    blob, err = clients.encode_kho_test(t.nr_folios, t.csum, t.folios_info, size=t.nr_folios * 8 + 4096)
    assert err == 0 and blob == real


def test_root_fdt_encoder_reproduces_real_kernel_bytes(read):
    """kho_init's sequential write, then kho_add_subtree in the kernel's order."""
    mem = SparseDir(oracle("A-selftest", "ram-stage1.sparse.tar.xz"))
    page = root.build_root_at_boot(P.E, A.map_root)
    assert page.add_subtree("kexec-metadata", *A.subtrees["kexec-metadata"]) == 0
    at_init = page.totalsize()
    assert page.add_subtree("kho_test", *A.subtrees["kho_test"]) == 0
    full = read("A-selftest", "ram-stage1-out-fdt-full.dtb")
    assert page.blob() == full
    # debugfs out/fdt: the current page cut to the size it had at kho_init
    assert page.buf[:at_init] == read("A-selftest", "stage1-debugfs", "kho", "out", "fdt")
    # the whole 4 KiB page as it sat in RAM, stale tail included
    assert bytes(page.buf) == mem.read(A.root_fdt, 4096)


def test_root_fdt_encoder_four_subtrees(read):
    page = root.build_root_at_boot(P.E, B.map_root)
    assert list(B.subtrees) == ["kexec-metadata", "kho_test", "LUO", "memblock"]
    for name, (phys, size) in B.subtrees.items():
        assert page.add_subtree(name, phys, size) == 0
    assert page.blob() == read("B-luo-memblock-chain", "ram-stage1-out-fdt-full.dtb")
    assert [n for _, n in page.subnodes()] == ["memblock", "LUO", "kho_test", "kexec-metadata"]


def test_setup_data_found_in_ram():
    mem = SparseDir(oracle("A-selftest", "ram-stage1.sparse.tar.xz"))
    found = list(structs.find_setup_data(mem))
    assert found == [(A.setup_data, structs.KhoData(A.root_fdt, 0x1000, A.scratch_array, 0x30))]
    nxt, typ, kd = structs.decode_setup_data(mem, A.setup_data)
    assert typ == structs.SETUP_KEXEC_KHO and kd.scratch_size == 48


def test_debugfs_scratch_text(read):
    phys = structs.parse_debugfs_scratch(read("A-selftest", "stage1-debugfs", "kho", "out", "scratch_phys",
                                              mode="r"), "scratch_phys")
    lens = structs.parse_debugfs_scratch(read("A-selftest", "stage1-debugfs", "kho", "out", "scratch_len",
                                              mode="r"), "scratch_len")
    assert list(zip(phys, lens)) == list(A.scratch)
    assert structs.format_debugfs_scratch(phys) == read("A-selftest", "stage1-debugfs", "kho", "out",
                                                         "scratch_phys", mode="r")


@pytest.mark.parametrize("case", ["C-zero-fdt", "C-compat-kho-v3", "C-zero-mem-map"])
def test_fault_injected_pages_decode_as_the_kernel_saw_them(case, read):
    page = read(case, "fdt-page-after-injection.bin")
    before = read(case, "fdt-before-injection.dtb")
    if case == "C-zero-fdt":
        assert F.kernel_check_header(page) == -F.FDT_ERR_BADMAGIC        # "is invalid: -9"
    elif case == "C-compat-kho-v3":
        assert F.kernel_check_header(page) == 0
        assert F.node_check_compatible(page[:F.totalsize(page)], 0, "kho-v4") == 1   # ": 1"
    else:
        r = root.decode_root(page)
        assert r.mem_map == 0 and root.decode_root(before).mem_map != 0



def test_fdt_error_names_are_libfdts():
    """errors.py keeps libfdt's error names itself (it imports nothing of
    pykho); they are what pylibfdt's fdt_strerror says for every code."""
    import libfdt

    from pykho import errors
    for err in range(-64, 65):
        assert errors.fdt_strerror(err) == libfdt.fdt_strerror(err), err
    assert F.fdt_strerror is errors.fdt_strerror
    e = errors.FdtError("root FDT", 0x1000, -F.FDT_ERR_BADMAGIC, "check")
    assert str(e) == "root FDT at 0x1000: check: libfdt error -9 (FDT_ERR_BADMAGIC)"
