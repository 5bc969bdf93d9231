# Conversion of hiredis replies into Python objects (shared by every
# connection type of the extension).

cdef object reply_error(const char *text, size_t length):
    return ReplyError(text[:length].decode("utf-8", "replace"))


cdef object reply_to_py(const redisReply *r):
    """Convert a RESP2 reply: bulk and status -> bytes, integer -> int,
    nil -> None, array -> list, error -> a ReplyError *instance* (returned,
    not raised, so that one bad element of an array does not hide the rest)."""
    cdef int kind = r.type
    cdef size_t i
    cdef list items
    if kind == REDIS_REPLY_STRING or kind == REDIS_REPLY_STATUS:
        return PyBytes_FromStringAndSize(r.str, <Py_ssize_t>r.len)
    if kind == REDIS_REPLY_INTEGER:
        return PyLong_FromLongLong(r.integer)
    if kind == REDIS_REPLY_NIL:
        return None
    if kind == REDIS_REPLY_ARRAY:
        items = PyList_New(0)
        for i in range(r.elements):
            items.append(reply_to_py(r.element[i]))
        return items
    if kind == REDIS_REPLY_ERROR:
        return reply_error(r.str, r.len)
    return ReplyError(f"unsupported reply type {kind} (tinytown speaks RESP2)")
