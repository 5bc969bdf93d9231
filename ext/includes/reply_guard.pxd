# The guard against replies no command is waiting for (ext/tt_reply_guard.h).

from hiredis cimport redisAsyncContext

cdef extern from "tt_reply_guard.h" nogil:
    ctypedef struct tt_guard:
        const Py_ssize_t *pending
        int subscribed
        int tripped
        const char **sub_names
        const size_t *sub_lens
        int sub_count

    int tt_guard_install(redisAsyncContext *ac, tt_guard *g)
    void tt_guard_remove(redisAsyncContext *ac)
