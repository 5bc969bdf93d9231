# cython: language_level=3, freethreading_compatible=False
"""tinytown's transport: Redis connections on hiredis, driven by asyncio.

The module ``tinytown._transport.ext`` (see the map in ``tinytown._transport``).
Private; the public API is :mod:`tinytown.channel`.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_WriteUnraisable
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsUnsignedLong, PyLong_CheckExact, PyLong_FromLongLong
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.string cimport memmove
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_CheckExact

from hiredis cimport *
from misuse cimport (
    TT_MAX_COMMAND_BYTES,
    tt_fork_generation,
    tt_refused,
    tt_track_fd,
    tt_untrack_fd,
    tt_watch_forks,
    tt_wire_size,
)
from reply_guard cimport tt_guard, tt_guard_install, tt_guard_remove

from tinytown.errors import (
    ConnectionError,
    EncodeError,
    InvalidArgumentError,
    ReplyError,
)
from tinytown._transport.resp import coerce_arg

# One module from these files, in this order; each says at its head what it
# uses from the ones before it.
include "reply.pyx"            # hiredis replies -> Python objects
include "future.pyx"           # ReplyFuture
include "argv.pyx"             # command arguments -> hiredis argv (both connections)
include "connection.pyx"       # Connection (asyncio, hiredis async context)
include "sync_connection.pyx"  # SyncConnection (blocking, redisContext)
