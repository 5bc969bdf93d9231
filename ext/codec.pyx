# cython: language_level=3, freethreading_compatible=False
"""tinytown's Message encoder in C: the module ``tinytown._codec``.

Private. :meth:`tinytown.Message.to_json` calls :func:`to_json` when this
module loads and keeps its pure-Python encoder as the reference and the
fallback (tests/test_codec.py holds the two to the same bytes). The module
needs no hiredis: it is the data model's, not the transport's.

Why C: a send spends more on the JSON than on Redis. The Python encoder joins
and encodes a dozen pieces (about 8k instructions for a 540-byte task); this
sizes the output, allocates it once and copies each piece into place.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_Check
from libc.string cimport memcpy, strlen

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX
    bint PyUnicode_IS_ASCII(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    bytes PyUnicode_AsUTF8String(object o)

cdef extern from "tt_json.h":
    Py_ssize_t tt_json_str_len(const char *s, Py_ssize_t n)
    char *tt_json_str_write(char *out, const char *s, Py_ssize_t n, Py_ssize_t size)

cdef enum:
    MAX_FIELDS = 6                      # text fields of one variant
    MAX_PIECES = 16 + 2 * MAX_FIELDS    # the Message's own pieces and the body's

cdef struct Piece:
    const char *data
    Py_ssize_t size
    bint quoted     # written as a JSON string: escaped, in quotes

# type(msg_type) -> (bytes, str, bytes, str, ..., bytes): the variant's JSON
# members, bytes copied as they are, each str the name of a text field (str,
# or None written as null) written as a JSON string.
cdef dict _variants = {}
cdef type _message_type = None
cdef object _fallback = None


def configure(type message_type, dict variants, fallback):
    """Set the Message class, the variants :func:`to_json` encodes and
    the encoder of everything else.

    ``variants`` maps a MessageType variant class to its body template,
    ``(bytes, str, bytes, ..., bytes)``: bytes are copied as they are; each
    str names a text field. ``fallback(message) -> bytes`` encodes what this
    module does not (and raises the errors). Raises TypeError or ValueError
    on a bad template.
    """
    global _message_type, _fallback
    if not callable(fallback):
        raise TypeError("configure: fallback must be callable")
    for cls, spec in variants.items():
        if not isinstance(cls, type) or type(spec) is not tuple:
            raise TypeError(f"configure: {cls!r}: expected a class and a tuple")
        if len(spec) % 2 == 0 or len(spec) > 2 * MAX_FIELDS + 1:
            raise ValueError(f"configure: {cls!r}: a template has 1 to {2 * MAX_FIELDS + 1} items, odd")
        for i, item in enumerate(spec):
            if type(item) is not (bytes if i % 2 == 0 else str):
                raise TypeError(f"configure: {cls!r}: item {i} must be {'bytes' if i % 2 == 0 else 'str'}")
    _variants.clear()
    _variants.update(variants)
    _message_type = message_type
    _fallback = fallback


cdef inline void _literal(Piece *p, const char *text) noexcept:
    p.data = text
    p.size = <Py_ssize_t>strlen(text)
    p.quoted = False


cdef int _text(Piece *p, object s, bint quoted, list keep) except -1:
    """Point ``p`` at the UTF-8 of str ``s``: ASCII text in place, other text
    through a UTF-8 copy held in ``keep`` (UnicodeEncodeError on a lone surrogate)."""
    cdef bytes utf8
    p.quoted = quoted
    if PyUnicode_IS_ASCII(s):
        p.data = PyUnicode_AsUTF8AndSize(s, &p.size)    # the string's own buffer
    else:
        # Not PyUnicode_AsUTF8AndSize: it would keep a UTF-8 copy inside the
        # string for as long as the message lives.
        utf8 = PyUnicode_AsUTF8String(s)
        keep.append(utf8)
        p.data = PyBytes_AS_STRING(utf8)
        p.size = PyBytes_GET_SIZE(utf8)
    return 0


def to_json(self) -> bytes:
    """The message as compact JSON (UTF-8 bytes), byte for byte what Rust's
    serde_json writes for Tinytown's ``Message``: ``id, from, to``, the
    message type flattened in (``"type"`` first), ``priority, created_at,
    correlation_id``. Raises :class:`~tinytown.EncodeError` for text with a
    lone surrogate, which JSON cannot carry.
    """
    try:
        result = _encode(self)
    except UnicodeEncodeError:  # a lone surrogate: the fallback raises the error
        result = None
    return _fallback(self) if result is None else result


cdef object _encode(message):
    """The JSON of ``message``, or None when it is not this encoder's to
    write (a subclass, a variant not configured, a field of an unexpected
    type). Raises UnicodeEncodeError on a lone surrogate, MemoryError past
    the largest bytes object."""
    cdef Piece pieces[MAX_PIECES]
    cdef Py_ssize_t sizes[MAX_PIECES]     # of the quoted pieces, escaped
    cdef Piece *p
    cdef int n = 0, i
    cdef Py_ssize_t total = 0, size
    cdef char *out
    cdef list keep
    cdef tuple spec

    if type(message) is not _message_type:
        return None
    spec = _variants.get(type(message.msg_type))
    if spec is None:
        return None
    # Every value first: the attribute reads and rfc3339() are the only
    # Python code run; from the first pointer taken on, nothing runs any.
    mid, from_, to = message.id, message.from_, message.to
    msg_type, corr = message.msg_type, message.correlation_id
    priority = message.priority._value_
    created = message.created_at
    created_text = getattr(created, "_text", None)   # Timestamp caches its text
    if created_text is None:
        created_text = created.rfc3339()
    fields = [getattr(msg_type, spec[i]) for i in range(1, len(spec), 2)]
    if not (PyUnicode_Check(mid) and PyUnicode_Check(from_) and PyUnicode_Check(to)
            and PyUnicode_Check(priority) and PyUnicode_Check(created_text)
            and (corr is None or PyUnicode_Check(corr))):
        return None
    for value in fields:
        if value is not None and not PyUnicode_Check(value):
            return None

    keep = []
    _literal(&pieces[n], b'{"id":"'); n += 1
    _text(&pieces[n], mid, False, keep); n += 1
    _literal(&pieces[n], b'","from":"'); n += 1
    _text(&pieces[n], from_, False, keep); n += 1
    _literal(&pieces[n], b'","to":"'); n += 1
    _text(&pieces[n], to, False, keep); n += 1
    _literal(&pieces[n], b'",'); n += 1
    for i in range(len(spec)):
        p = &pieces[n]
        n += 1
        if i % 2 == 0:
            p.data = PyBytes_AS_STRING(spec[i])     # the template holds it
            p.size = PyBytes_GET_SIZE(spec[i])
            p.quoted = False
        elif fields[i // 2] is None:
            _literal(p, b'null')
        else:
            _text(p, fields[i // 2], True, keep)
    _literal(&pieces[n], b',"priority":"'); n += 1
    _text(&pieces[n], priority, False, keep); n += 1
    _literal(&pieces[n], b'","created_at":"'); n += 1
    _text(&pieces[n], created_text, False, keep); n += 1
    if corr is None:
        _literal(&pieces[n], b'","correlation_id":null}'); n += 1
    else:
        _literal(&pieces[n], b'","correlation_id":"'); n += 1
        _text(&pieces[n], corr, False, keep); n += 1
        _literal(&pieces[n], b'"}'); n += 1

    for i in range(n):
        if pieces[i].quoted:
            size = tt_json_str_len(pieces[i].data, pieces[i].size)
            if size < 0:
                raise MemoryError("message_json: the message is too large to encode")
            sizes[i] = size
        else:
            size = pieces[i].size
        if total > PY_SSIZE_T_MAX - size:
            raise MemoryError("message_json: the message is too large to encode")
        total += size
    result = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(result)
    for i in range(n):
        if pieces[i].quoted:
            out = tt_json_str_write(out, pieces[i].data, pieces[i].size, sizes[i])
        else:
            memcpy(out, pieces[i].data, <size_t>pieces[i].size)
            out += pieces[i].size
    return result
