# Conversion of hiredis replies into Python objects (shared by every
# connection type of the extension).
#
# Needs: only transport.pyx's cimports (hiredis) and ReplyError; first included.

cdef object reply_error(const char *text, size_t length):
    return ReplyError(text[:length].decode("utf-8", "replace"))


# RESP3 types of hiredis 1.x (absent from 0.14's headers) that convert to
# RESP2 shapes, as hiredis-py (the Python transport's parser) converts them.
# The async connections' guard (tt_reply_guard.h) refuses the other RESP3
# types before they are parsed.
cdef enum:
    TT_REPLY_SET = 10
    TT_REPLY_BIGNUM = 13
    TT_REPLY_VERB = 14


cdef object reply_to_py(const redisReply *r):
    """Convert a RESP2 reply: bulk and status -> bytes, integer -> int,
    nil -> None, array -> list, error -> a ReplyError *instance* (returned,
    not raised, so that one bad element of an array does not hide the rest)."""
    cdef int kind = r.type
    cdef size_t i
    cdef list items
    if kind == REDIS_REPLY_STRING or kind == REDIS_REPLY_STATUS:
        return PyBytes_FromStringAndSize(r.str, <Py_ssize_t>r.len)
    if kind == TT_REPLY_BIGNUM or kind == TT_REPLY_VERB:   # (a verbatim string's text, no prefix)
        return PyBytes_FromStringAndSize(r.str, <Py_ssize_t>r.len)
    if kind == REDIS_REPLY_INTEGER:
        return PyLong_FromLongLong(r.integer)
    if kind == REDIS_REPLY_NIL:
        return None
    if kind == REDIS_REPLY_ARRAY or kind == TT_REPLY_SET:
        items = PyList_New(0)
        for i in range(r.elements):
            items.append(reply_to_py(r.element[i]))
        return items
    if kind == REDIS_REPLY_ERROR:
        return reply_error(r.str, r.len)
    raise ConnectionError(
        f"connection to Redis dropped: the server sent a reply of RESP3 type {kind} on a "
        "RESP2 connection (protocol violation)")
