"""tinytown's transport stack: Redis connections under Channel and SyncChannel.

Private: the public API is :mod:`tinytown.channel` and
:mod:`tinytown.sync_channel`. The package's layers, each importing only from
those above it in this list (and from :mod:`tinytown.errors`,
:mod:`tinytown.address`, :mod:`tinytown.backoff` of the data model):

``futures``   the leaf: :class:`~.futures.PyReplyFuture` and ``deliver`` (the
              futures of the Python transports), ``FORKS`` and ``check_loop``
              (the guard against connecting on a loop inherited across fork()).
``resp``      RESP encoding of commands with the extension's argument rules
              (the extension calls its ``coerce_arg`` for unusual arguments).
``ext``       the Cython extension over hiredis (built from ``ext/*.pyx``):
              ``Connection`` (asyncio), ``SyncConnection`` (blocking),
              ``ReplyFuture``. Optional: a missing build is not an error.
``pyasync``   :class:`~.pyasync.PyConnection`, the pure-Python asyncio
              transport (the ``hiredis`` package's parser).
``pysync``    :class:`~.pysync.PySyncConnection`, the pure-Python blocking one
              (also the only one with TLS).
``cluster``   :class:`~.cluster.ClusterConnection` and ``ClusterTopology``:
              Redis Cluster routing over connections of either transport.
``choose``    which transport a channel gets (``transport=``,
              ``TINYTOWN_TRANSPORT``, else the extension if it loads), and the
              :class:`~.choose.OpenConnection` protocol they all provide;
              loads ``ext`` or ``pyasync``/``pysync`` lazily.

Above the package: ``tinytown.channel`` and ``tinytown.sync_channel`` (the
facades), then ``town``, ``cli``, ``bench``. This ``__init__`` imports nothing,
so ``import tinytown._transport.choose`` works without the extension.
"""
