#!/usr/bin/env python
"""tinytown's RESP encoder (tinytown._transport.resp.encode_command) against hiredis-py's
``pack_command`` (C), on commands of the shapes tinytown sends; medians of
several runs, in microseconds. Usage:

    .venv/bin/python benches/pack_command.py

Why the Python transport does not use pack_command (hiredis-py 3.5, this
2-core machine, Nov 2026, medians): it is faster on small commands (one 1 KB
argument: 0.3 us vs 0.9 us; EVALSHA with 7 arguments: 1.8 us vs 7 us, or
1.7 us vs 2.5 us once tinytown's own type and size checks run before it)
but far slower on large arguments (1 MiB: 3.8-4.1 ms vs 0.02 ms; 16 MiB,
the default largest message: 64-75 ms vs 2-3.6 ms), and its time for a
send_many of 1000 x 1 KB varied from 0.12 ms to 4 ms between runs (0.14 ms
for encode_command). End to end over TINYTOWN_TRANSPORT=python the small-
command gain (send: 50 us vs 56 us, send_many(1000): 6.9 ms vs 7.5 ms) is
within this machine's noise. Run this again before switching.
"""

from __future__ import annotations

import statistics
import timeit

import hiredis

from tinytown._transport.resp import encode_command

COMMANDS = {
    "RPUSH key 1 KB": ("RPUSH", "tt:t:inbox:x", b"x" * 1024),
    "EVALSHA, 7 arguments": ("EVALSHA", "a" * 40, 2, "k1", "k2", "v", 1.5, b"zz"),
    "RPUSH key 1 MiB": ("RPUSH", "k", b"y" * 2**20),
    "RPUSH key 16 MiB": ("RPUSH", "k", b"y" * 2**24),
    "RPUSH 1000 x 1 KB": ("RPUSH", "k") + (b"y" * 1024,) * 1000,
}


def main() -> None:
    for name, command in COMMANDS.items():
        size = len(encode_command(command))
        number = max(3, 2_000_000 // size)
        times = {}
        for label, encode in (("encode_command", encode_command), ("pack_command", hiredis.pack_command)):
            assert encode(command) == encode_command(command)
            runs = timeit.repeat(lambda: encode(command), number=number, repeat=7)
            times[label] = statistics.median(runs) / number * 1e6
        print(f"{name:24s} encode_command {times['encode_command']:10.2f} us   "
              f"pack_command {times['pack_command']:10.2f} us")


if __name__ == "__main__":
    main()
