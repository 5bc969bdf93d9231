/* tt_format_command(): one command in RESP, byte for byte as hiredis's
 * redisFormatCommandArgv writes it ("*argc\r\n", then "$len\r\n" + data +
 * "\r\n" per argument), into a caller's buffer of `cap` bytes, NUL-terminated
 * (hiredis reads the command's name from it with strchr). Returns the length
 * (the NUL not counted), or 0 when it does not fit: the caller then lets
 * hiredis format it.
 *
 * Why: hiredis builds a command in an sds string grown piece by piece with a
 * printf-style formatter, then copies it into its output buffer and frees it.
 * For the small commands of the hot path (a send is ~600 bytes) that was
 * ~3k instructions of a ~10k-instruction round trip; this is a few hundred. */
#ifndef TT_FORMAT_H
#define TT_FORMAT_H

#include <stddef.h>
#include <string.h>

static size_t tt_put_size(char *p, size_t v) {
    char digits[20];
    size_t n = 0, i;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (i = 0; i < n; i++)
        p[i] = digits[n - 1 - i];
    return n;
}

static size_t tt_format_command(int argc, const char **argv, const size_t *lens,
                                char *buf, size_t cap) {
    /* Each header: a type byte, at most 20 digits, CRLF; each argument also
     * ends with CRLF. Sums cannot overflow: the caller refused commands of
     * TT_MAX_COMMAND_BYTES or more (tt_misuse.h) before calling. */
    size_t need = 1 + 20 + 2 + 1, len;
    char *p = buf;
    int i;
    if (argc < 1)
        return 0;
    for (i = 0; i < argc; i++) {
        need += 1 + 20 + 2 + lens[i] + 2;
        if (need > cap)
            return 0;
    }
    *p++ = '*';
    p += tt_put_size(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (i = 0; i < argc; i++) {
        len = lens[i];
        *p++ = '$';
        p += tt_put_size(p, len);
        *p++ = '\r';
        *p++ = '\n';
        if (len)
            memcpy(p, argv[i], len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p = '\0';
    return (size_t)(p - buf);
}

#endif
