# Declarations of the part of hiredis that tinytown uses.
#
# Only the API shared by hiredis 0.14 (Debian 12) and 1.x is declared, so the
# extension builds against either. Struct layouts are not copied: Cython only
# needs the member names it touches, and the C compiler sees the real headers.

cdef extern from "hiredis/hiredis.h" nogil:
    enum:
        REDIS_OK
        REDIS_ERR
        REDIS_IN_CALLBACK   # redisContext.flags: hiredis is running a reply callback

    # redisContext.flags: set while hiredis runs a reply callback.
    enum:
        REDIS_IN_CALLBACK

    enum:
        REDIS_REPLY_STRING
        REDIS_REPLY_ARRAY
        REDIS_REPLY_INTEGER
        REDIS_REPLY_NIL
        REDIS_REPLY_STATUS
        REDIS_REPLY_ERROR

    ctypedef struct redisReply:
        int type
        long long integer
        size_t len
        char *str
        size_t elements
        redisReply **element

    ctypedef struct redisContext:
        int err
        char *errstr
        int fd
        int flags
        char *obuf          # the output buffer (an sds string)

    # Returns int in hiredis 0.14, long long in 1.x: commands are < 2 GiB.
    int redisFormatCommandArgv(char **target, int argc, const char **argv, const size_t *argvlen)
    void redisFreeCommand(char *cmd)
    int redisAppendFormattedCommand(redisContext *c, const char *cmd, size_t len)

cdef extern from "hiredis/sds.h" nogil:
    size_t sdslen(char *s)

# The callbacks and event hooks are called by hiredis from inside
# redisAsyncHandleRead/Write, which tinytown only calls with the GIL held:
# they are declared without nogil so that they may touch Python objects.
cdef extern from "hiredis/async.h":
    ctypedef struct redisAsyncContext

    ctypedef void redisCallbackFn(redisAsyncContext *ac, void *reply, void *privdata) noexcept
    ctypedef void redisConnectCallback(const redisAsyncContext *ac, int status) noexcept
    ctypedef void redisDisconnectCallback(const redisAsyncContext *ac, int status) noexcept

    # Not a C type of its own (it is an anonymous struct inside
    # redisAsyncContext): declared so that Cython can address ac.ev.<hook>.
    ctypedef struct redisAsyncEventHooks:
        void *data
        void (*addRead)(void *privdata) noexcept
        void (*delRead)(void *privdata) noexcept
        void (*addWrite)(void *privdata) noexcept
        void (*delWrite)(void *privdata) noexcept
        void (*cleanup)(void *privdata) noexcept

cdef extern from "hiredis/async.h" nogil:
    ctypedef struct redisAsyncContext:
        redisContext c
        int err
        char *errstr
        void *data
        redisAsyncEventHooks ev

    redisAsyncContext *redisAsyncConnect(const char *ip, int port)
    redisAsyncContext *redisAsyncConnectUnix(const char *path)
    int redisAsyncSetConnectCallback(redisAsyncContext *ac, redisConnectCallback *fn)
    int redisAsyncSetDisconnectCallback(redisAsyncContext *ac, redisDisconnectCallback *fn)
    void redisAsyncDisconnect(redisAsyncContext *ac)
    void redisAsyncFree(redisAsyncContext *ac)
    void redisAsyncHandleRead(redisAsyncContext *ac)
    void redisAsyncHandleWrite(redisAsyncContext *ac)
    int redisAsyncCommandArgv(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                              int argc, const char **argv, const size_t *argvlen)
    int redisAsyncFormattedCommand(redisAsyncContext *ac, redisCallbackFn *fn, void *privdata,
                                   const char *cmd, size_t len)

# The blocking API of a plain redisContext, used by SyncConnection. The
# calls that do I/O (connect, redisBufferRead/Write) are made without the GIL.
from posix.time cimport timeval

cdef extern from "hiredis/hiredis.h" nogil:
    redisContext *redisConnectWithTimeout(const char *ip, int port, const timeval tv)
    redisContext *redisConnectUnixWithTimeout(const char *path, const timeval tv)
    int redisSetTimeout(redisContext *c, const timeval tv)
    void redisFree(redisContext *c)
    void freeReplyObject(void *reply)
    int redisAppendCommandArgv(redisContext *c, int argc, const char **argv, const size_t *argvlen)
    void *redisCommandArgv(redisContext *c, int argc, const char **argv, const size_t *argvlen)
    int redisBufferRead(redisContext *c)
    int redisBufferWrite(redisContext *c, int *done)
    int redisGetReply(redisContext *c, void **reply)
    int redisGetReplyFromReader(redisContext *c, void **reply)
