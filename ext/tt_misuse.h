/* Checks that keep a misused connection from crashing the process.
 *
 * tt_refused(): commands that change a connection's protocol state (pub/sub
 * or MONITOR mode, RESP3, replies switched off, a reset or a QUIT). hiredis's
 * async context keeps or re-queues the callbacks of SUBSCRIBE and MONITOR,
 * which a request/reply connection cannot survive, and the other ones leave
 * every later reply out of step (or missing). They are refused before
 * anything is formatted. The table is also in src/tinytown/_transport/resp.py
 * (check_command, the Python transport's copy): keep the two in step.
 *
 * tt_wire_size(): an upper bound of the bytes of one formatted command.
 * hiredis 0.14 formats a command into a buffer whose size it computes in an
 * `int`: 2 GiB or more overflows it (a crash, or a wrong error and a leak).
 *
 * tt_fork_generation: bumped in the child of every fork(), so that a
 * connection inherited from the parent can tell, for the price of one integer
 * compare, that its socket is shared with another process (and the child's
 * copies of the sockets are pointed at /dev/null: see tt_track_fd).
 */
#ifndef TT_MISUSE_H
#define TT_MISUSE_H

#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

/* Exclusive upper bound of a formatted command, in bytes (2 GiB - 64 KiB). */
#define TT_MAX_COMMAND_BYTES ((size_t)2147483648u - 65536u)

static int tt_word(const char *s, size_t n, const char *word) {
    size_t i;
    for (i = 0; word[i] != '\0'; i++) {
        if (i >= n)
            return 0;
        char c = s[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != word[i])
            return 0;
    }
    return i == n;
}

/* Why the command argv[0..argc) must not be sent, or NULL. */
static const char *tt_refused(int argc, const char **argv, const size_t *lens) {
    const char *s;
    size_t n;
    if (argc < 1)
        return NULL;
    s = argv[0];
    n = lens[0];
    switch (n) {
    case 4:
        if (tt_word(s, n, "QUIT"))
            return "QUIT";
        break;
    case 5:
        if (tt_word(s, n, "RESET"))
            return "RESET";
        /* HELLO alone or HELLO 2 keeps RESP2; any other version would not */
        if (tt_word(s, n, "HELLO") && argc >= 2 && !(lens[1] == 1 && argv[1][0] == '2'))
            return "HELLO with a protocol version other than 2";
        break;
    case 6:
        if (tt_word(s, n, "CLIENT") && argc >= 3 && tt_word(argv[1], lens[1], "REPLY")
                && (tt_word(argv[2], lens[2], "OFF") || tt_word(argv[2], lens[2], "SKIP")))
            return "CLIENT REPLY OFF/SKIP";
        break;
    case 7:
        if (tt_word(s, n, "MONITOR"))
            return "MONITOR";
        break;
    case 9:
        if (tt_word(s, n, "SUBSCRIBE"))
            return "SUBSCRIBE";
        break;
    case 10:
        if (tt_word(s, n, "PSUBSCRIBE"))
            return "PSUBSCRIBE";
        if (tt_word(s, n, "SSUBSCRIBE"))
            return "SSUBSCRIBE";
        break;
    case 11:
        if (tt_word(s, n, "UNSUBSCRIBE"))
            return "UNSUBSCRIBE";
        break;
    case 12:
        if (tt_word(s, n, "PUNSUBSCRIBE"))
            return "PUNSUBSCRIBE";
        if (tt_word(s, n, "SUNSUBSCRIBE"))
            return "SUNSUBSCRIBE";
        break;
    }
    return NULL;
}

/* At least the size of the command once formatted: "*argc\r\n", then
 * "$len\r\n" + data + "\r\n" per argument (24 bytes cover a header and CRLFs). */
static size_t tt_wire_size(int argc, const size_t *lens) {
    size_t total = 16;
    int i;
    for (i = 0; i < argc; i++) {
        if (lens[i] >= TT_MAX_COMMAND_BYTES)
            return TT_MAX_COMMAND_BYTES;
        total += lens[i] + 24;
        if (total >= TT_MAX_COMMAND_BYTES)
            return TT_MAX_COMMAND_BYTES;
    }
    return total;
}

/* The sockets of the open connections. In the child of a fork, each is made
 * to point at /dev/null (dup2 over the same descriptor number): whatever the
 * child then does with an inherited connection -- its event loop reading it
 * (the loop's epoll set is shared with the parent and reports the parent's
 * readiness), hiredis writing, the loop unregistering it (epoll_ctl finds no
 * such file: the parent's registration stays) -- cannot reach the parent's
 * socket. Only touched with the GIL held, and in the child handler. */
static int *tt_fds = NULL;
static size_t tt_fds_len = 0, tt_fds_cap = 0;

static int tt_track_fd(int fd) {
    if (fd < 0)
        return 0;
    if (tt_fds_len == tt_fds_cap) {
        size_t cap = tt_fds_cap ? tt_fds_cap * 2 : 64;
        int *grown = (int *)realloc(tt_fds, cap * sizeof(int));
        if (grown == NULL)
            return -1;
        tt_fds = grown;
        tt_fds_cap = cap;
    }
    tt_fds[tt_fds_len++] = fd;
    return 0;
}

static void tt_untrack_fd(int fd) {
    size_t i;
    for (i = 0; i < tt_fds_len; i++) {
        if (tt_fds[i] == fd) {
            tt_fds[i] = tt_fds[--tt_fds_len];
            return;
        }
    }
}

static volatile unsigned long tt_fork_generation = 0;

static void tt_after_fork_in_child(void) {
    size_t i;
    int null;
    tt_fork_generation++;
    if (tt_fds_len == 0)
        return;
    null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        return;
    for (i = 0; i < tt_fds_len; i++) {
        if (tt_fds[i] != null) {
            dup2(null, tt_fds[i]);
            fcntl(tt_fds[i], F_SETFD, FD_CLOEXEC);
        }
    }
    close(null);
}

/* Once per process (module init): count forks from now on. */
static int tt_watch_forks(void) {
    return pthread_atfork(NULL, NULL, tt_after_fork_in_child);
}

#endif /* TT_MISUSE_H */
