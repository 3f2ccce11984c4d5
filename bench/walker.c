/*
 * walker.c - a C reference walker for pykho's benchmark (bench/run.py).
 *
 * Walks a KHO preserved-memory map held in a memory image the same way the
 * incoming kernel does, and validates it the way pykho's summarize() does:
 *
 *   radix (kho-v2..v4): __kho_radix_walk_tree - depth first from level 5,
 *     table entries in ascending index, leaf bits in ascending order
 *     (for_each_set_bit), key decoded per bit (kho_radix_decode_key);
 *   chunks (kho-v1): kho_mem_deserialize - chunk by chunk, element by
 *     element, bit by bit.
 *
 * Every visited block is "reserved": counted by order, its physical address
 * added to a sum (a check value pykho's decode reproduces); blocks and bytes
 * follow from the counts by order.  Then the overlap / duplicate check: every non-empty
 * bitmap becomes a record (order, first block, bits); records are sorted by
 * the memory they span and each pair of records whose spans intersect is
 * compared (the larger blocks' bits spread over the smaller ones'), the same
 * algorithm as pykho.abi.bits.BlockSets, so both report the same counts.
 *
 * --popcount counts each bitmap with popcount instead of visiting each bit
 * (what pykho's summarize() does); the default is the kernel's per-bit walk.
 *
 * Memory comes from either
 *   an image file (written by bench/inprocess.py): "KHOIMG1\0", u64 npages,
 *     u64 pfn[npages] ascending, then the npages pages.  Pages not in the
 *     image read as zero, as pykho's SparseMemory does for RAM never written;
 *   or a sparse extract directory (pykho.memory.SparseDir, what
 *     bench/gen.py writes): MANIFEST.tsv lines "file<TAB>phys<TAB>length"
 *     ('#' lines are comments) and the files they name.  Memory not in a
 *     listed file does not exist: a pointer to it is a problem, as in pykho.
 *
 * --handover DIR walks a handover directory as users have it (bench/gen.py):
 * the map's root is the "preserved-memory-map" property of the root FDT in
 * DIR/debugfs/kho/out/fdt (its "compatible" must be kho-v2..v4: radix), the
 * memory is the sparse extract DIR/ram.
 *
 * usage: walker IMAGE|RAMDIR radix ROOT [REPS] [--popcount]
 *        walker IMAGE|RAMDIR chunks FIRST PRESERVE_BITS [REPS] [--popcount]
 *        walker --handover DIR [REPS] [--popcount]
 * prints one JSON object: counts (blocks, bytes, by_order, physsum, the
 * overlap check's duplicates and overlaps, problems), and the best of REPS
 * runs of the walk and of the overlap check, wall clock (walk_s, check_s,
 * total_s) and CPU time of the process (cpu_*), and load_s: reading the
 * files, which the walk times leave out (bench/run.py times the process).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "walker.c reads the image's little-endian words natively"
#endif

typedef unsigned __int128 u128;

#define PAGE_SHIFT 12
#define PAGE_SIZE 4096
#define KHO_ORDER_0_LOG2 52
#define KHO_TABLE_SIZE_LOG2 9
#define KHO_BITMAP_SIZE_LOG2 15
#define KHO_TREE_MAX_DEPTH 6
#define LEAF_BITS (1u << KHO_BITMAP_SIZE_LOG2)
#define KHOSER_BITMAP_SIZE 255
#define MAX_CHUNKS (1u << 22)

/* ---- the memory image ---- */
static uint64_t npages;
static uint64_t *pfns;
static uint8_t *pages;
static uint8_t zero_page[PAGE_SIZE] __attribute__((aligned(64)));
static uint64_t missing_reads;
static int sparse_dir;          /* memory from a sparse extract: pages not listed do not exist */

/* Memory for [phys, phys+size): a pointer into the image, the zero page for
 * memory never written, NULL when the span crosses pages not stored together. */
static const uint8_t *p2v(uint64_t phys, uint64_t size)
{
	uint64_t pfn = phys >> PAGE_SHIFT, last = (phys + size - 1) >> PAGE_SHIFT;
	uint64_t lo = 0, hi = npages;

	while (lo < hi) {
		uint64_t mid = (lo + hi) / 2;
		if (pfns[mid] < pfn)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < npages && pfns[lo] == pfn) {
		if (lo + (last - pfn) < npages && pfns[lo + (last - pfn)] == last)
			return pages + lo * PAGE_SIZE + (phys & (PAGE_SIZE - 1));
		return NULL;
	}
	if (pfn == last && !sparse_dir) {
		missing_reads++;
		return zero_page + (phys & (PAGE_SIZE - 1));
	}
	return NULL;
}

/* ---- what the walk counts ---- */
struct stats {
	uint64_t physsum;
	uint64_t by_order[64];
	uint64_t problems, duplicates, overlaps, unaligned;
};
static struct stats st;
static int popcount_mode;

/* The kernel's per-block callback (kho_preserved_memory_reserve: memblock
 * reserve + page->private = order) reduced to counting: blocks by order and
 * the sum of their addresses.  Callers batch the counter updates in locals. */
static inline void reserve(uint64_t phys, unsigned order)
{
	st.by_order[order]++;
	st.physsum += phys;
}

/* ---- records for the overlap check ---- */
struct rec {
	u128 start, end;        /* bytes spanned, first to last set bit */
	uint64_t first;         /* block index (at order) of bit `off` */
	const uint64_t *bits;
	uint32_t off, n;        /* bits [off, off+n) of `bits` */
	unsigned order;
	uint64_t where;
};
static struct rec *recs;
static size_t nrecs, caprecs;
static uint64_t one_bit_words[64];   /* 1 << i, bitmaps of single-block records */

static void add_record(unsigned order, uint64_t first, const uint64_t *bits, uint32_t nbits, uint64_t where)
{
	uint32_t nw = (nbits + 63) / 64, lo = UINT32_MAX, hi = 0;

	for (uint32_t w = 0; w < nw; w++)
		if (bits[w]) {
			lo = w * 64 + __builtin_ctzll(bits[w]);
			break;
		}
	if (lo == UINT32_MAX)
		return;
	for (uint32_t w = nw; w-- > 0;)
		if (bits[w]) {
			hi = w * 64 + 64 - __builtin_clzll(bits[w]);
			break;
		}
	if (nrecs == caprecs) {
		caprecs = caprecs ? 2 * caprecs : 4096;
		recs = realloc(recs, caprecs * sizeof(*recs));
		if (!recs) {
			perror("realloc");
			exit(1);
		}
	}
	struct rec *r = &recs[nrecs++];
	r->order = order;
	r->first = first + lo;
	r->bits = bits;
	r->off = lo;
	r->n = hi - lo;
	r->start = (u128)r->first << (order + PAGE_SHIFT);
	r->end = (u128)(r->first + r->n) << (order + PAGE_SHIFT);
	r->where = where;
}

/* 64 bits of a record from bit `pos` (relative to r->first), 0 past the end */
static inline uint64_t rec_word(const struct rec *r, uint64_t pos)
{
	if (pos >= r->n)
		return 0;
	uint64_t p = pos + r->off, w = p / 64, b = p % 64;
	uint64_t nw = (r->off + r->n + 63) / 64;
	uint64_t x = r->bits[w] >> b;
	if (b && w + 1 < nw)
		x |= r->bits[w + 1] << (64 - b);
	if (r->n - pos < 64)
		x &= (1ull << (r->n - pos)) - 1;
	return x;
}

static uint64_t rec_count(const struct rec *r, uint64_t pos, uint64_t len)
{
	uint64_t c = 0;
	for (uint64_t i = 0; i < len; i += 64) {
		uint64_t x = rec_word(r, pos + i);
		if (len - i < 64)
			x &= (1ull << (len - i)) - 1;
		c += __builtin_popcountll(x);
	}
	return c;
}

static void pair(const struct rec *a, const struct rec *b)
{
	if (a->order < b->order) {
		const struct rec *t = a;
		a = b;
		b = t;
	}
	const struct rec *hi = a, *lo = b;
	u128 s = a->start > b->start ? a->start : b->start;
	u128 e = a->end < b->end ? a->end : b->end;
	unsigned hsh = hi->order + PAGE_SHIFT, lsh = lo->order + PAGE_SHIFT, d = hi->order - lo->order;
	u128 hb0 = s >> hsh, nh = ((e - 1) >> hsh) - hb0 + 1;
	u128 lb0 = s >> lsh, nl = ((e - 1) >> lsh) - lb0 + 1;
	uint64_t n = 0;

	for (u128 j = 0; j < nh; j += 64) {
		uint64_t x = rec_word(hi, (uint64_t)(hb0 - hi->first + j));
		if (nh - j < 64)
			x &= (1ull << (uint64_t)(nh - j)) - 1;
		while (x) {
			unsigned k = __builtin_ctzll(x);
			x &= x - 1;
			u128 blk = hb0 + j + k;
			u128 c0 = blk << d, c1 = (blk + 1) << d;
			if (c0 < lb0)
				c0 = lb0;
			if (c1 > lb0 + nl)
				c1 = lb0 + nl;
			if (c1 > c0)
				n += rec_count(lo, (uint64_t)(c0 - lo->first), (uint64_t)(c1 - c0));
		}
	}
	if (d == 0)
		st.duplicates += n;
	else
		st.overlaps += n;
}

static int cmp_rec(const void *x, const void *y)
{
	const struct rec *a = x, *b = y;
	return a->start < b->start ? -1 : a->start > b->start;
}

static void check_overlaps(void)
{
	size_t *active = malloc((nrecs + 1) * sizeof(size_t)), na = 0;

	qsort(recs, nrecs, sizeof(*recs), cmp_rec);
	for (size_t i = 0; i < nrecs; i++) {
		size_t k = 0;
		for (size_t j = 0; j < na; j++)
			if (recs[active[j]].end > recs[i].start)
				active[k++] = active[j];
		na = k;
		for (size_t j = 0; j < na; j++)
			pair(&recs[active[j]], &recs[i]);
		active[na++] = i;
	}
	free(active);
}

/* ---- visited set (shared nodes, chunk cycles) ---- */
static uint64_t *seen;
static size_t seen_cap, seen_n;

static int seen_add(uint64_t p)
{
	if (2 * (seen_n + 1) > seen_cap) {
		size_t oc = seen_cap;
		uint64_t *old = seen;
		seen_cap = oc ? 2 * oc : 1 << 16;
		seen = calloc(seen_cap, sizeof(uint64_t));
		seen_n = 0;
		for (size_t i = 0; i < oc; i++)
			if (old[i])
				seen_add(old[i] - 1);
		free(old);
	}
	size_t h = (size_t)((p >> 12) * 0x9E3779B97F4A7C15ull) & (seen_cap - 1);
	while (seen[h]) {
		if (seen[h] == p + 1)
			return 0;
		h = (h + 1) & (seen_cap - 1);
	}
	seen[h] = p + 1;
	seen_n++;
	return 1;
}

/* ---- radix ---- */
static void walk_leaf(const uint64_t *bm, uint64_t key, uint64_t leaf_phys)
{
	unsigned top = 64 - __builtin_clzll(key | (LEAF_BITS - 1));
	int order = KHO_ORDER_0_LOG2 + 1 - (int)top;

	if (order < 0) {        /* no valid order: pykho reports radix-bad-key */
		st.problems++;
		return;
	}
	if (KHO_ORDER_0_LOG2 - order < KHO_BITMAP_SIZE_LOG2) {
		/* the order bit is inside the leaf: each bit decodes alone */
		for (unsigned w = 0; w < LEAF_BITS / 64; w++) {
			uint64_t x = bm[w];
			while (x) {
				unsigned b = __builtin_ctzll(x);
				x &= x - 1;
				uint64_t k = key | (w * 64 + b);
				int o = KHO_ORDER_0_LOG2 + 1 - (64 - __builtin_clzll(k));
				if (o < 0 || o > KHO_ORDER_0_LOG2) {
					st.problems++;
					continue;
				}
				uint64_t phys = k << (PAGE_SHIFT + o);
				reserve(phys, o);
				add_record(o, phys >> (PAGE_SHIFT + o), &one_bit_words[0], 1, leaf_phys);
			}
		}
		return;
	}
	if (popcount_mode) {
		uint64_t n = 0;
		for (unsigned w = 0; w < LEAF_BITS / 64; w++)
			n += __builtin_popcountll(bm[w]);
		st.by_order[order] += n;
	} else {
		/* for_each_set_bit + kho_radix_decode_key per bit, as the kernel */
		uint64_t n = 0, psum = 0;
		unsigned cur = order;
		for (unsigned w = 0; w < LEAF_BITS / 64; w++) {
			uint64_t x = bm[w];
			while (x) {
				unsigned b = __builtin_ctzll(x);
				x &= x - 1;
				uint64_t k = key | (w * 64 + b);
				unsigned o = KHO_ORDER_0_LOG2 - (64 - __builtin_clzll(k)) + 1;
				psum += k << (PAGE_SHIFT + o);
				if (o == cur) {
					n++;
				} else {
					st.by_order[cur] += n;
					cur = o;
					n = 1;
				}
			}
		}
		st.by_order[cur] += n;
		st.physsum += psum;
	}
	add_record(order, key & ((1ull << (KHO_ORDER_0_LOG2 - order)) - 1), bm, LEAF_BITS, leaf_phys);
}

static void walk_tree(const uint64_t *table, unsigned level, uint64_t start)
{
	for (unsigned i = 0; i < PAGE_SIZE / 8; i++) {
		if (!table[i])
			continue;
		unsigned shift = (level - 1) * KHO_TABLE_SIZE_LOG2 + KHO_BITMAP_SIZE_LOG2;
		uint64_t key = start | ((uint64_t)i << shift);
		uint64_t phys = table[i];
		if (!seen_add(phys)) {  /* a shared node: walked once */
			st.problems++;
			continue;
		}
		if (phys & (PAGE_SIZE - 1))
			st.problems++;  /* reported, walked anyway */
		const uint64_t *node = (const uint64_t *)p2v(phys, PAGE_SIZE);
		if (!node) {
			st.problems++;
			continue;
		}
		if (level == 1)
			walk_leaf(node, key, phys);
		else
			walk_tree(node, level - 1, key);
	}
}

static void walk_radix(uint64_t root)
{
	const uint64_t *node;

	if (!root)
		return;
	seen_add(root);
	node = (const uint64_t *)p2v(root, PAGE_SIZE);
	if (!node) {
		st.problems++;
		return;
	}
	walk_tree(node, KHO_TREE_MAX_DEPTH - 1, 0);
}

/* ---- chunk list ---- */
static void walk_chunks(uint64_t first, uint32_t preserve_bits)
{
	uint64_t at = first, nchunks = 0;
	uint32_t nbytes = preserve_bits / 8, nw = preserve_bits / 64;

	while (at) {
		if (!seen_add(at) || ++nchunks > MAX_CHUNKS) {
			st.problems++;
			return;
		}
		const uint8_t *c = p2v(at, PAGE_SIZE);
		if (!c) {
			st.problems++;
			return;
		}
		uint64_t next, phys_start, bmp;
		uint32_t order, num;
		memcpy(&next, c, 8);
		memcpy(&order, c + 8, 4);
		memcpy(&num, c + 12, 4);
		if (num > KHOSER_BITMAP_SIZE) {
			st.problems++;
			num = KHOSER_BITMAP_SIZE;
		}
		unsigned shift = order + PAGE_SHIFT;
		for (uint32_t i = 0; i < num; i++) {
			memcpy(&phys_start, c + 16 + 16 * i, 8);
			memcpy(&bmp, c + 24 + 16 * i, 8);
			const uint64_t *bm = (const uint64_t *)p2v(bmp, nbytes);
			if (!bm) {
				st.problems++;
				continue;
			}
			if (shift >= 64)
				continue;
			if (popcount_mode) {
				uint64_t n = 0;
				for (uint32_t w = 0; w < nw; w++)
					n += __builtin_popcountll(bm[w]);
				st.by_order[order] += n;
			} else {
				/* kho_mem_deserialize: for_each_set_bit, phys per bit */
				uint64_t n = 0, psum = 0;
				for (uint32_t w = 0; w < nw; w++) {
					uint64_t x = bm[w];
					while (x) {
						unsigned b = __builtin_ctzll(x);
						x &= x - 1;
						psum += phys_start + ((uint64_t)(w * 64 + b) << shift);
						n++;
					}
				}
				st.by_order[order] += n;
				st.physsum += psum;
			}
			if (phys_start & ((1ull << shift) - 1)) {
				uint64_t n = 0;
				for (uint32_t w = 0; w < nw; w++)
					n += __builtin_popcountll(bm[w]);
				if (n) {
					st.unaligned += n;
					st.problems++;
				}
				continue;
			}
			add_record(order, phys_start >> shift, bm, preserve_bits, bmp);
		}
		at = next;
	}
}

static double now(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void load_image(const char *path)
{
	FILE *f = fopen(path, "rb");
	char magic[8];

	if (!f || fread(magic, 1, 8, f) != 8 || memcmp(magic, "KHOIMG1", 8) ||
	    fread(&npages, 8, 1, f) != 1) {
		fprintf(stderr, "%s: not a KHOIMG1 image\n", path);
		exit(2);
	}
	pfns = malloc(npages * 8 + 8);
	pages = aligned_alloc(PAGE_SIZE, npages * PAGE_SIZE + PAGE_SIZE);
	if (!pfns || !pages || fread(pfns, 8, npages, f) != npages ||
	    fread(pages, PAGE_SIZE, npages, f) != npages) {
		fprintf(stderr, "%s: short image\n", path);
		exit(2);
	}
	fclose(f);
}

struct seg {
	uint64_t phys, len;
	char *file;
};

static int cmp_seg(const void *x, const void *y)
{
	const struct seg *a = x, *b = y;
	return a->phys < b->phys ? -1 : a->phys > b->phys;
}

/* A sparse extract directory: MANIFEST.tsv, one file per range. */
static void load_sparse(const char *dir)
{
	char path[4096], line[8192];
	struct seg *segs = NULL;
	size_t nsegs = 0, cap = 0;
	FILE *m;

	snprintf(path, sizeof(path), "%s/MANIFEST.tsv", dir);
	m = fopen(path, "r");
	if (!m) {
		perror(path);
		exit(2);
	}
	while (fgets(line, sizeof(line), m)) {
		char *name = line, *a, *b, *end;
		if (line[0] == '#' || line[0] == '\n' || line[0] == '\r' || !line[0])
			continue;
		a = strchr(name, '\t');
		if (!a || !(b = strchr(a + 1, '\t'))) {
			fprintf(stderr, "%s: bad line: %s", path, line);
			exit(2);
		}
		*a++ = 0;
		*b++ = 0;
		if (nsegs == cap) {
			cap = cap ? 2 * cap : 64;
			segs = realloc(segs, cap * sizeof(*segs));
			if (!segs) {
				perror("realloc");
				exit(1);
			}
		}
		segs[nsegs].phys = strtoull(a, &end, 0);
		segs[nsegs].len = strtoull(b, &end, 0);
		segs[nsegs].file = strdup(name);
		if (segs[nsegs].len)
			nsegs++;
	}
	fclose(m);
	qsort(segs, nsegs, sizeof(*segs), cmp_seg);
	/* pages spanned; a page two ranges share is counted once */
	uint64_t n = 0, last = UINT64_MAX;
	for (size_t i = 0; i < nsegs; i++) {
		uint64_t first = segs[i].phys >> PAGE_SHIFT, end = (segs[i].phys + segs[i].len - 1) >> PAGE_SHIFT;
		if (last != UINT64_MAX && first <= last) {
			if (segs[i].phys < ((last + 1) << PAGE_SHIFT) && (segs[i].phys & (PAGE_SIZE - 1)) == 0) {
				fprintf(stderr, "%s: ranges overlap at 0x%llx\n", path, (unsigned long long)segs[i].phys);
				exit(2);
			}
			first = last + 1;
		}
		if (end >= first)
			n += end - first + 1;
		if (last == UINT64_MAX || end > last)
			last = end;
	}
	npages = n;
	pfns = malloc(npages * 8 + 8);
	pages = aligned_alloc(PAGE_SIZE, npages * PAGE_SIZE + PAGE_SIZE);
	if (!pfns || !pages) {
		perror("malloc");
		exit(1);
	}
	uint64_t k = 0;
	last = UINT64_MAX;
	for (size_t i = 0; i < nsegs; i++) {
		uint64_t first = segs[i].phys >> PAGE_SHIFT, end = (segs[i].phys + segs[i].len - 1) >> PAGE_SHIFT;
		uint64_t base_k;        /* index of the range's first page */
		if (last != UINT64_MAX && first <= last) {
			base_k = k - 1 - (last - first);
		} else {
			base_k = k;
		}
		for (uint64_t p = (last != UINT64_MAX && first <= last) ? last + 1 : first; p <= end; p++) {
			pfns[k] = p;
			memset(pages + k * PAGE_SIZE, 0, PAGE_SIZE);
			k++;
		}
		if (last == UINT64_MAX || end > last)
			last = end;
		snprintf(path, sizeof(path), "%s/%s", dir, segs[i].file);
		FILE *f = fopen(path, "rb");
		if (!f || fread(pages + base_k * PAGE_SIZE + (segs[i].phys & (PAGE_SIZE - 1)), 1, segs[i].len, f) !=
		    segs[i].len) {
			fprintf(stderr, "%s: missing or shorter than 0x%llx bytes\n", path,
				(unsigned long long)segs[i].len);
			exit(2);
		}
		fclose(f);
		free(segs[i].file);
	}
	free(segs);
	sparse_dir = 1;
}

static void load(const char *path)
{
	char mf[4096];
	FILE *f;

	snprintf(mf, sizeof(mf), "%s/MANIFEST.tsv", path);
	f = fopen(mf, "r");
	if (f) {
		fclose(f);
		load_sparse(path);
	} else {
		load_image(path);
	}
}

/* ---- the root FDT (debugfs out/fdt) ---- */
static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The value of property `name` of the root node; NULL when absent. */
static const uint8_t *fdt_root_prop(const uint8_t *fdt, size_t n, const char *name, uint32_t *len)
{
	if (n < 40 || be32(fdt) != 0xd00dfeed)
		return NULL;
	uint32_t total = be32(fdt + 4), off_struct = be32(fdt + 8), off_strings = be32(fdt + 12);
	if (total < n)
		n = total;
	size_t p = off_struct;
	int depth = 0;
	while (p + 4 <= n) {
		uint32_t tag = be32(fdt + p);
		p += 4;
		if (tag == 1) {                 /* FDT_BEGIN_NODE */
			while (p < n && fdt[p])
				p++;
			p = (p + 4) & ~(size_t)3;
			depth++;
		} else if (tag == 2) {          /* FDT_END_NODE */
			if (--depth <= 0)
				return NULL;
		} else if (tag == 3) {          /* FDT_PROP */
			if (p + 8 > n)
				return NULL;
			uint32_t l = be32(fdt + p), nameoff = be32(fdt + p + 4);
			p += 8;
			if (p + l > n)
				return NULL;
			if (depth == 1 && off_strings + nameoff < n &&
			    !strncmp((const char *)fdt + off_strings + nameoff, name, n - off_strings - nameoff)) {
				*len = l;
				return fdt + p;
			}
			p = (p + l + 3) & ~(size_t)3;
		} else if (tag != 4) {          /* FDT_NOP; FDT_END or garbage */
			return NULL;
		}
	}
	return NULL;
}

/* The map's root from DIR/debugfs/kho/out/fdt; loads DIR/ram. */
static uint64_t load_handover(const char *dir, char *compatible, size_t clen)
{
	char path[4096];
	static uint8_t fdt[1 << 20];
	size_t n;
	uint32_t len;
	FILE *f;

	snprintf(path, sizeof(path), "%s/debugfs/kho/out/fdt", dir);
	f = fopen(path, "rb");
	if (!f) {
		perror(path);
		exit(2);
	}
	n = fread(fdt, 1, sizeof(fdt), f);
	fclose(f);
	if (n >= 40 && be32(fdt + 4) > n) {
		fprintf(stderr, "%s: %zu bytes, the header says %u: a cut debugfs copy (property names lost)\n",
			path, n, be32(fdt + 4));
		exit(2);
	}
	const uint8_t *c = fdt_root_prop(fdt, n, "compatible", &len);
	if (!c || !len) {
		fprintf(stderr, "%s: no compatible in the root node\n", path);
		exit(2);
	}
	snprintf(compatible, clen, "%.*s", (int)strnlen((const char *)c, len), c);
	if (strcmp(compatible, "kho-v2") && strcmp(compatible, "kho-v3") && strcmp(compatible, "kho-v4")) {
		fprintf(stderr, "%s: compatible %s: only radix maps (kho-v2..v4) are walked from a handover\n",
			path, compatible);
		exit(2);
	}
	const uint8_t *v = fdt_root_prop(fdt, n, "preserved-memory-map", &len);
	if (!v || len != 8) {
		fprintf(stderr, "%s: no 8-byte preserved-memory-map\n", path);
		exit(2);
	}
	uint64_t root;
	memcpy(&root, v, 8);            /* a native (little-endian) u64, as the kernel sets it */
	snprintf(path, sizeof(path), "%s/ram", dir);
	load_sparse(path);
	return root;
}

int main(int argc, char **argv)
{
	int chunks = 0, reps = 1, a = 4;
	uint64_t start;
	uint32_t preserve_bits = 0;
	double best_walk = 1e30, best_check = 1e30, best_cpu_walk = 1e30, best_cpu_check = 1e30;
	char compatible[64] = "";

	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--popcount")) {
			popcount_mode = 1;
			memmove(&argv[i], &argv[i + 1], (argc - i) * sizeof(char *));
			argc--;
			i--;
		}
	for (int i = 0; i < 64; i++)
		one_bit_words[i] = 1ull << i;
	double l0 = now(CLOCK_MONOTONIC);
	if (argc >= 3 && !strcmp(argv[1], "--handover")) {
		start = load_handover(argv[2], compatible, sizeof(compatible));
		if (argc > 3)
			reps = atoi(argv[3]);
	} else {
		if (argc < 4) {
			fprintf(stderr, "usage: %s IMAGE|RAMDIR radix ROOT [REPS] [--popcount]\n"
				"       %s IMAGE|RAMDIR chunks FIRST PRESERVE_BITS [REPS] [--popcount]\n"
				"       %s --handover DIR [REPS] [--popcount]\n", argv[0], argv[0], argv[0]);
			return 2;
		}
		chunks = !strcmp(argv[2], "chunks");
		start = strtoull(argv[3], NULL, 0);
		if (chunks) {
			if (argc < 5)
				return 2;
			preserve_bits = strtoul(argv[4], NULL, 0);
			a = 5;
		}
		if (argc > a)
			reps = atoi(argv[a]);
		load(argv[1]);
	}
	double load_s = now(CLOCK_MONOTONIC) - l0;

	for (int r = 0; r < reps; r++) {
		memset(&st, 0, sizeof(st));
		nrecs = 0;
		missing_reads = 0;
		if (seen)
			memset(seen, 0, seen_cap * sizeof(uint64_t));
		seen_n = 0;
		double c0 = now(CLOCK_PROCESS_CPUTIME_ID), t0 = now(CLOCK_MONOTONIC);
		if (chunks)
			walk_chunks(start, preserve_bits);
		else
			walk_radix(start);
		double c1 = now(CLOCK_PROCESS_CPUTIME_ID), t1 = now(CLOCK_MONOTONIC);
		check_overlaps();
		double c2 = now(CLOCK_PROCESS_CPUTIME_ID), t2 = now(CLOCK_MONOTONIC);
		if (t1 - t0 < best_walk)
			best_walk = t1 - t0;
		if (t2 - t1 < best_check)
			best_check = t2 - t1;
		if (c1 - c0 < best_cpu_walk)
			best_cpu_walk = c1 - c0;
		if (c2 - c1 < best_cpu_check)
			best_cpu_check = c2 - c1;
	}

	u128 bytes = 0;
	uint64_t blocks = 0;
	for (int o = 0; o < 64; o++) {
		blocks += st.by_order[o];
		if (o + PAGE_SHIFT < 128)
			bytes += (u128)st.by_order[o] << (o + PAGE_SHIFT);
	}
	char dec[48], *q = dec + sizeof(dec) - 1;
	*q = 0;
	do {
		*--q = '0' + (int)(bytes % 10);
		bytes /= 10;
	} while (bytes);
	printf("{\"cpu_walk_s\": %.9f, \"cpu_check_s\": %.9f, \"cpu_total_s\": %.9f, \"load_s\": %.9f, ",
	       best_cpu_walk, best_cpu_check, best_cpu_walk + best_cpu_check, load_s);
	if (compatible[0])
		printf("\"compatible\": \"%s\", \"map_root\": %llu, ", compatible, (unsigned long long)start);
	printf("\"mode\": \"%s\", \"reps\": %d, \"walk_s\": %.9f, \"check_s\": %.9f, \"total_s\": %.9f, "
	       "\"blocks\": %llu, \"bytes\": %s, \"duplicates\": %llu, \"overlaps\": %llu, "
	       "\"unaligned\": %llu, \"problems\": %llu, \"records\": %zu, \"missing_reads\": %llu, ",
	       popcount_mode ? "popcount" : "per-bit", reps, best_walk, best_check, best_walk + best_check,
	       (unsigned long long)blocks, q,
	       (unsigned long long)st.duplicates, (unsigned long long)st.overlaps,
	       (unsigned long long)st.unaligned, (unsigned long long)st.problems, nrecs,
	       (unsigned long long)missing_reads);
	if (popcount_mode)
		printf("\"physsum\": null, ");
	else
		printf("\"physsum\": %llu, ", (unsigned long long)st.physsum);
	printf("\"by_order\": {");
	for (int o = 0, sep = 0; o < 64; o++)
		if (st.by_order[o]) {
			printf("%s\"%d\": %llu", sep ? ", " : "", o, (unsigned long long)st.by_order[o]);
			sep = 1;
		}
	printf("}}\n");
	return 0;
}
