# cython: language_level=3, freethreading_compatible=False
"""tinytown's transport: Redis connections on hiredis, driven by asyncio.

Private module; the public API is :mod:`tinytown.channel`.
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
from reply_guard cimport tt_guard, tt_guard_install, tt_guard_remove

from tinytown.errors import (
    ConnectionError,
    EncodeError,
    InvalidArgumentError,
    ReplyError,
)
from tinytown._resp import coerce_arg

include "reply.pyx"
include "future.pyx"
include "connection.pyx"
include "sync_connection.pyx"
