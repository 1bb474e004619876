/* Counting kernels of streamsolve: sort uint32 pair keys and count each distinct key;
   merge sorted (key, count) lists in one pass.

   Loaded with ctypes by streamsolve/native.py (no Python API, so any C compiler builds it);
   streamsolve falls back to NumPy when it is absent. An LSD radix sort is linear in the
   number of keys, about 3x faster here than NumPy's comparison sort, and counting the pairs
   of every context offset is what competes with the tokenizer for the cores. */

#include <stdint.h>
#include <stdlib.h>

#define MAX_DIGIT_BITS 11

/* Sort keys[0:n] (all below 2**bits) and write the distinct keys, ascending, to keys[0:m]
   and the number of times each occurred to counts[0:m]; return m (-1 if out of memory).
   scratch must have room for n keys; counts for n values. */
int64_t radix_count_u32(uint32_t *keys, uint32_t *scratch, int64_t n, int bits,
                        int64_t *counts)
{
    if (n <= 0)
        return 0;
    if (bits < 1)
        bits = 1;
    if (bits > 32)
        bits = 32;
    const int passes = (bits + MAX_DIGIT_BITS - 1) / MAX_DIGIT_BITS;
    const int width = (bits + passes - 1) / passes;
    const int64_t buckets = (int64_t)1 << width;
    const uint32_t mask = (uint32_t)(buckets - 1);
    int64_t *hist = calloc((size_t)passes * (size_t)buckets, sizeof(int64_t));
    if (hist == NULL)
        return -1;

    for (int64_t i = 0; i < n; i++) {
        const uint32_t k = keys[i];
        for (int p = 0; p < passes; p++)
            hist[p * buckets + ((k >> (p * width)) & mask)]++;
    }

    uint32_t *src = keys, *dst = scratch;
    for (int p = 0; p < passes; p++) {
        int64_t *h = hist + p * buckets;
        int64_t sum = 0, largest = 0;
        for (int64_t b = 0; b < buckets; b++) {
            const int64_t c = h[b];
            if (c > largest)
                largest = c;
            h[b] = sum;
            sum += c;
        }
        if (largest == n)
            continue; /* every key has the same digit here: the pass would not move any */
        const int shift = p * width;
        for (int64_t i = 0; i < n; i++) {
            const uint32_t k = src[i];
            dst[h[(k >> shift) & mask]++] = k;
        }
        uint32_t *swap = src;
        src = dst;
        dst = swap;
    }
    free(hist);

    /* Run-length encode src into keys: the write index never passes the read index, so
       this is safe in place (src == keys) as well as from scratch. */
    int64_t m = 0, run = 1;
    uint32_t previous = src[0];
    for (int64_t i = 1; i < n; i++) {
        const uint32_t k = src[i];
        if (k == previous) {
            run++;
            continue;
        }
        keys[m] = previous;
        counts[m] = run;
        m++;
        previous = k;
        run = 1;
    }
    keys[m] = previous;
    counts[m] = run;
    return m + 1;
}

/* Merge k sorted lists of distinct int64 keys with their int64 values into out_keys,
   out_values (room for the sum of the lengths), adding the values of keys found in several;
   return the length of the merged list. One pass over the data: the smallest head is found
   by scanning the k heads, which is cheap for the small k of a tree merge (callers keep
   k <= 16). */
int64_t merge_add_k_i64(int k, const int64_t *const *keys, const int64_t *const *values,
                        const int64_t *lengths, int64_t *out_keys, int64_t *out_values)
{
    int64_t position[64];
    if (k > 64)
        return -1;
    for (int r = 0; r < k; r++)
        position[r] = 0;
    int64_t m = 0;
    for (;;) {
        int found = 0;
        int64_t smallest = 0;
        for (int r = 0; r < k; r++) {
            if (position[r] < lengths[r]) {
                const int64_t key = keys[r][position[r]];
                if (!found || key < smallest) {
                    smallest = key;
                    found = 1;
                }
            }
        }
        if (!found)
            return m;
        int64_t total = 0;
        for (int r = 0; r < k; r++) {
            if (position[r] < lengths[r] && keys[r][position[r]] == smallest)
                total += values[r][position[r]++];
        }
        out_keys[m] = smallest;
        out_values[m++] = total;
    }
}
