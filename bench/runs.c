/*
 * runs.c - the runs of radix leaves in C, for bench/compiled_walk.py.
 *
 * What pykho.abi.bits.radix_batch_runs computes with numpy, as a plain
 * loop: for n leaves of one order (512 little-endian u64 words each, key
 * prefixes keys[]), the maximal runs of set bits as (key + bit) << shift,
 * ascending, a run that goes on in the next leaf joined to it.  The
 * benchmark loads it with ctypes to measure what compiled code in pykho's
 * walk would give; pykho itself does not use it.
 *
 * Returns the number of runs, or (size_t)-1 when more than cap.
 */
#include <stddef.h>
#include <stdint.h>

static int put(int64_t *starts, int64_t *ends, size_t *k, size_t cap, int64_t s, int64_t e)
{
	if (*k && ends[*k - 1] == s) {
		ends[*k - 1] = e;
		return 0;
	}
	if (*k == cap)
		return -1;
	starts[*k] = s;
	ends[*k] = e;
	(*k)++;
	return 0;
}

size_t radix_runs(const uint64_t *words, size_t n, const uint64_t *keys, unsigned shift,
		  int64_t *starts, int64_t *ends, size_t cap)
{
	size_t k = 0;

	for (size_t r = 0; r < n; r++) {
		const uint64_t *p = words + r * 512;
		uint64_t key = keys[r], first = 0;
		int in = 0;

		for (unsigned i = 0; i < 512; i++) {
			uint64_t x = p[i];
			unsigned b = 0;

			if (in ? x == ~0ULL : x == 0)
				continue;
			while (b < 64) {
				uint64_t y = (in ? ~x : x) >> b;

				if (!y)
					break;
				b += __builtin_ctzll(y);
				if (!in) {
					first = i * 64 + b;
					in = 1;
					continue;
				}
				if (put(starts, ends, &k, cap, (int64_t)((key + first) << shift),
					(int64_t)((key + i * 64 + b) << shift)))
					return (size_t)-1;
				in = 0;
			}
		}
		if (in && put(starts, ends, &k, cap, (int64_t)((key + first) << shift),
			      (int64_t)((key + 32768) << shift)))
			return (size_t)-1;
	}
	return k;
}
