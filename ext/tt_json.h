/* JSON strings as serde_json writes them, for ext/codec.pyx.
 *
 * serde_json escapes '"' and '\\', writes \b \t \n \f \r short, every other
 * byte below 0x20 as \u00XX with lowercase hex, and everything else raw (DEL,
 * U+2028/2029 and all non-ASCII, as UTF-8). The input is UTF-8 already, so the
 * work is per byte: one pass to size the output, one to write it.
 */
#ifndef TT_JSON_H
#define TT_JSON_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* 0: copied as is; 'u': written \u00XX; any other: written '\\' then it. */
static const unsigned char tt_json_escape[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
    /* 0x60..0xff: nothing to escape (static arrays are zero-filled) */
};

#define TT_ONES 0x0101010101010101ULL
#define TT_HIGHS 0x8080808080808080ULL

/* Nonzero when a byte of w needs escaping: one below 0x20, '"' or '\\'.
 * Each term is the classic "has a byte below k" test, (x - k*ONES) & ~x &
 * HIGHS, on w, w ^ '"'s and w ^ '\\'s (a zero byte of those is a match); the
 * three share one ~w since '"' and '\\' leave the high bits alone. Borrows can
 * flag extra bytes but never miss one, and a word is flagged only if it has a
 * true match, so "any" is exact. Eight bytes for about ten instructions. */
static inline uint64_t tt_json_special(uint64_t w)
{
    uint64_t quote = w ^ (TT_ONES * '"'), backslash = w ^ (TT_ONES * '\\');
    return ((w - TT_ONES * 0x20) | (quote - TT_ONES) | (backslash - TT_ONES)) & ~w & TT_HIGHS;
}

static inline uint64_t tt_load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);   /* an unaligned load, in one instruction where allowed */
    return w;
}

#ifdef __SSE2__
#include <emmintrin.h>

/* Nonzero when one of the 16 bytes at p needs escaping (x86-64 always has
 * SSE2: about half the instructions of two tt_json_special words). */
static inline int tt_json_special16(const unsigned char *p)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m128i low = _mm_set1_epi8(0x1f);
    __m128i hit = _mm_cmpeq_epi8(_mm_max_epu8(v, low), low);     /* v <= 0x1f */
    hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, _mm_set1_epi8('"')));
    hit = _mm_or_si128(hit, _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    return _mm_movemask_epi8(hit);
}
#endif

/* Bytes of s[0..n) written as a quoted JSON string; -1 if that would pass
 * PY_SSIZE_T_MAX (the caller raises MemoryError). */
static Py_ssize_t tt_json_str_len(const char *s, Py_ssize_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    Py_ssize_t extra = 0;

    if (n > (PY_SSIZE_T_MAX - 2) / 6)
        return -1;
#ifdef __SSE2__
    for (; end - p >= 16; p += 16) {
        if (tt_json_special16(p)) {
            for (int i = 0; i < 16; i++) {
                unsigned char e = tt_json_escape[p[i]];
                if (e)
                    extra += e == 'u' ? 5 : 1;
            }
        }
    }
#endif
    for (; end - p >= 8; p += 8) {
        if (tt_json_special(tt_load64(p))) {
            for (int i = 0; i < 8; i++) {
                unsigned char e = tt_json_escape[p[i]];
                if (e)
                    extra += e == 'u' ? 5 : 1;
            }
        }
    }
    for (; p < end; p++) {
        unsigned char e = tt_json_escape[*p];
        if (e)
            extra += e == 'u' ? 5 : 1;
    }
    return n + extra + 2;
}

/* Writes s[0..n) quoted and escaped at out; size is tt_json_str_len(s, n),
 * the room out has. Returns the end of what it wrote. */
static char *tt_json_str_write(char *out, const char *s, Py_ssize_t n, Py_ssize_t size)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *end = p + n, *run = p;

    *out++ = '"';
    if (size == n + 2) {    /* nothing to escape: the common case */
        memcpy(out, s, (size_t)n);
        out += n;
        *out++ = '"';
        return out;
    }
    while (p < end) {
        unsigned char e;
        if (end - p >= 8 && !tt_json_special(tt_load64(p))) {
            p += 8;
            continue;
        }
        e = tt_json_escape[*p];
        if (!e) {
            p++;
            continue;
        }
        memcpy(out, run, (size_t)(p - run));   /* the unescaped run before it */
        out += p - run;
        *out++ = '\\';
        if (e == 'u') {
            out[0] = 'u'; out[1] = '0'; out[2] = '0';
            out[3] = hex[*p >> 4]; out[4] = hex[*p & 15];
            out += 5;
        } else {
            *out++ = (char)e;
        }
        run = ++p;
    }
    memcpy(out, run, (size_t)(end - run));
    out += end - run;
    *out++ = '"';
    return out;
}

#endif /* TT_JSON_H */
