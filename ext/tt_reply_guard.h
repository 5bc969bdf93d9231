/* A guard in front of hiredis's async reply dispatch.
 *
 * hiredis's redisProcessCallbacks() assert()s that a reply which no command
 * is waiting for arrives on a subscribed connection; on any other connection
 * such a reply (a server or proxy answering twice, garbage that happens to
 * parse as two replies) aborts the whole process. In subscribed mode,
 * hiredis 0.14 also assert()s on the shape of every pub/sub array.
 *
 * The guard wraps the reader's object constructors, which hiredis calls while
 * it parses, before it dispatches: when a reply starts that the connection
 * cannot be expecting, the constructor returns NULL, which the reader treats
 * as an allocation failure. The reader stops with an error, hiredis
 * disconnects, and every pending call fails with ConnectionError; the
 * `tripped` flag lets the extension name the real cause.
 *
 * On hiredis 1.x it also refuses the RESP3 types a RESP2 connection cannot
 * get (see tt_resp2_type), whose constructors it wraps too.
 *
 * Written against the public parts of hiredis 0.14 and 1.x: the reader's
 * `fn` and `privdata` members and the read task's `type`, `idx`, `parent`
 * and `privdata`.
 */
#ifndef TT_REPLY_GUARD_H
#define TT_REPLY_GUARD_H

#include <stddef.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#if HIREDIS_MAJOR >= 1
typedef size_t tt_array_len_t;
#else
typedef int tt_array_len_t;
#endif

typedef struct tt_guard {
    const Py_ssize_t *pending;  /* the owner's count of replies still awaited */
    int subscribed;             /* pub/sub pushes are expected */
    int tripped;                /* a reply was refused */
    const char **sub_names;     /* the channels subscribed to (owned by the Connection) */
    const size_t *sub_lens;
    int sub_count;
    int want_sub_name;          /* parsing a subscribe confirmation: check its channel */
} tt_guard;

static redisReplyObjectFunctions *tt_orig_fns = NULL;
static redisReplyObjectFunctions tt_guard_fns;

static tt_guard *tt_guard_of(const redisReadTask *task) {
    while (task->parent != NULL)
        task = task->parent;
    return (tt_guard *)task->privdata;
}

/* True if `type` can be converted to a RESP2-shaped value. RESP3 types that
 * map onto RESP2 ones pass (sets as arrays, big numbers and verbatim strings
 * as bulk strings: as the Python transport's parser does); doubles, booleans,
 * maps, attributes and pushes do not: a RESP2 connection never gets them
 * (HELLO 3 is refused), and hiredis 1.x aborts on some of them arriving
 * unsolicited or inside a pub/sub array. */
static int tt_resp2_type(int type) {
    switch (type) {
    case REDIS_REPLY_STRING: case REDIS_REPLY_ARRAY: case REDIS_REPLY_INTEGER:
    case REDIS_REPLY_NIL: case REDIS_REPLY_STATUS: case REDIS_REPLY_ERROR:
        return 1;
#if HIREDIS_MAJOR >= 1
    case REDIS_REPLY_SET: case REDIS_REPLY_BIGNUM: case REDIS_REPLY_VERB:
        return 1;
#endif
    default:
        return 0;
    }
}

/* True when a top-level reply of `type` is acceptable now. Error replies
 * always are: hiredis itself handles an unsolicited one (e.g. "max number of
 * clients reached") by disconnecting with that message. */
static int tt_top_ok(tt_guard *g, int type, long long elements) {
    if (g == NULL)
        return 1;
    g->want_sub_name = 0;
    if (type == REDIS_REPLY_ERROR || *g->pending > 0)
        return 1;
    if (g->subscribed && type == REDIS_REPLY_ARRAY && elements >= 3 && elements <= 4)
        return 1;  /* [p]message / [p]subscribe / [p]unsubscribe */
    return 0;
}

/* hiredis reads the kind of a pub/sub array as a C string (up to its first
 * NUL), case-insensitively, with a leading 'p' marking the pattern variant:
 * compare the same way. */
static int tt_kind_is(const char *str, size_t len, int pattern, const char *word) {
    size_t n = strnlen(str, len);
    size_t w = strlen(word);
    if (pattern) {
        if (n == 0 || (str[0] != 'p' && str[0] != 'P'))
            return 0;
        str++;
        n--;
    }
    return n == w && strncasecmp(str, word, w) == 0;
}

static int tt_subscribed_to(const tt_guard *g, const char *str, size_t len) {
    int i;
    for (i = 0; i < g->sub_count; i++)
        if (g->sub_lens[i] == len && memcmp(g->sub_names[i], str, len) == 0)
            return 1;
    return 0;
}

/* In subscribed mode with nothing pending, the children of a pub/sub array:
 * kind and channel must be strings (hiredis asserts it); the kind must not be
 * an unsubscribe confirmation (tinytown never unsubscribes: it closes the
 * connection, and a forged one would take hiredis out of subscribed mode,
 * making the next push an abort) nor a psubscribe one (tinytown subscribes to
 * no pattern); a subscribe confirmation must name a channel subscribed to
 * (hiredis 1.x asserts it has a callback for it). */
static int tt_child_ok(const redisReadTask *task, tt_guard *g, int type,
                       const char *str, size_t len) {
    if (g == NULL || task->parent->parent != NULL || *g->pending > 0 || !g->subscribed)
        return 1;
    if (task->idx == 0) {
        if (type != REDIS_REPLY_STRING)
            return 0;
        if (tt_kind_is(str, len, 0, "unsubscribe") || tt_kind_is(str, len, 1, "unsubscribe")
                || tt_kind_is(str, len, 1, "subscribe"))
            return 0;
        g->want_sub_name = tt_kind_is(str, len, 0, "subscribe");
        return 1;
    }
    if (task->idx == 1) {
        if (type != REDIS_REPLY_STRING)
            return 0;
        if (g->want_sub_name && !tt_subscribed_to(g, str, len))
            return 0;
        return 1;
    }
    return 1;
}

static int tt_allowed(const redisReadTask *task, int type, long long elements,
                      const char *str, size_t len) {
    tt_guard *g = tt_guard_of(task);
    int ok = tt_resp2_type(type) && (task->parent == NULL ? tt_top_ok(g, type, elements)
                                                        : tt_child_ok(task, g, type, str, len));
    if (!ok && g != NULL)
        g->tripped = 1;
    return ok;
}

static void *tt_create_string(const redisReadTask *task, char *str, size_t len) {
    if (!tt_allowed(task, task->type, 0, str, len))
        return NULL;
    return tt_orig_fns->createString(task, str, len);
}

static void *tt_create_array(const redisReadTask *task, tt_array_len_t elements) {
    /* (the type of a RESP3 aggregate: set, map, attribute or push) */
    if (!tt_allowed(task, task->type, (long long)elements, NULL, 0))
        return NULL;
    return tt_orig_fns->createArray(task, elements);
}

static void *tt_create_integer(const redisReadTask *task, long long value) {
    if (!tt_allowed(task, REDIS_REPLY_INTEGER, 0, NULL, 0))
        return NULL;
    return tt_orig_fns->createInteger(task, value);
}

static void *tt_create_nil(const redisReadTask *task) {
    if (!tt_allowed(task, REDIS_REPLY_NIL, 0, NULL, 0))
        return NULL;
    return tt_orig_fns->createNil(task);
}

#if HIREDIS_MAJOR >= 1
/* RESP3 doubles and booleans: never acceptable (see tt_resp2_type). */
static void *tt_create_double(const redisReadTask *task, double value, char *str, size_t len) {
    (void)value; (void)str; (void)len;
    tt_allowed(task, REDIS_REPLY_DOUBLE, 0, NULL, 0);
    return NULL;
}

static void *tt_create_bool(const redisReadTask *task, int value) {
    (void)value;
    tt_allowed(task, REDIS_REPLY_BOOL, 0, NULL, 0);
    return NULL;
}
#endif

/* Put the guard on a new context's reader. Returns 0 if the reader does not
 * use hiredis's default constructors (then it is left alone). */
static int tt_guard_install(redisAsyncContext *ac, tt_guard *g) {
    redisReader *reader = ac->c.reader;
    if (reader == NULL || reader->fn == NULL)
        return 0;
    if (tt_orig_fns == NULL) {
        tt_orig_fns = reader->fn;
        tt_guard_fns = *reader->fn;  /* hiredis 1.x's extra constructors stay as they are */
        tt_guard_fns.createString = tt_create_string;
        tt_guard_fns.createArray = tt_create_array;
        tt_guard_fns.createInteger = tt_create_integer;
        tt_guard_fns.createNil = tt_create_nil;
#if HIREDIS_MAJOR >= 1
        tt_guard_fns.createDouble = tt_create_double;
        tt_guard_fns.createBool = tt_create_bool;
#endif
    } else if (reader->fn != tt_orig_fns) {
        return 0;
    }
    reader->fn = &tt_guard_fns;
    reader->privdata = g;
    return 1;
}

/* Detach the guard from a context whose owner is going away. */
static void tt_guard_remove(redisAsyncContext *ac) {
    if (ac->c.reader != NULL)
        ac->c.reader->privdata = NULL;
}

#endif /* TT_REPLY_GUARD_H */
