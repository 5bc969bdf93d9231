"""Build the Cython extensions of tinytown against the system's libhiredis.

hiredis is found with pkg-config (``TINYTOWN_HIREDIS_PREFIX`` overrides it, for
wheels built against a hiredis compiled from a pinned release). Only the API
shared by hiredis 0.14 and 1.x is used.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALL_HINT = (
    "tinytown: libhiredis not found (pkg-config hiredis failed); "
    "install it first: apt-get install libhiredis-dev (Debian/Ubuntu), "
    "dnf install hiredis-devel (Fedora), brew install hiredis (macOS)"
)


def hiredis_flags() -> dict[str, list[str]]:
    prefix = os.environ.get("TINYTOWN_HIREDIS_PREFIX")
    if prefix:
        libdir = os.path.join(os.path.abspath(prefix), "lib")
        return {
            "include_dirs": [os.path.join(prefix, "include")],
            "library_dirs": [libdir],
            "libraries": ["hiredis"],
            "extra_compile_args": [],
            # An rpath to the private hiredis lets the built module load as is
            # and lets auditwheel find the library to copy into the wheel (it
            # then rewrites the rpath to the wheel's copy). On macOS the
            # library's absolute install name does the same for delocate.
            "extra_link_args": [f"-Wl,-rpath,{libdir}"] if sys.platform.startswith("linux") else [],
        }
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "hiredis"],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit(INSTALL_HINT)
    flags: dict[str, list[str]] = {
        "include_dirs": [], "library_dirs": [], "libraries": [],
        "extra_compile_args": [], "extra_link_args": [],
    }
    for tok in shlex.split(out):
        if tok.startswith("-I"):
            flags["include_dirs"].append(tok[2:])
        elif tok.startswith("-L"):
            flags["library_dirs"].append(tok[2:])
        elif tok.startswith("-l"):
            flags["libraries"].append(tok[2:])
        elif tok.startswith(("-D", "-U")):
            flags["extra_compile_args"].append(tok)
        else:
            flags["extra_link_args"].append(tok)
    return flags


def extensions() -> list[Extension]:
    from Cython.Build import cythonize

    flags = hiredis_flags()
    # hiredis headers are included as <hiredis/xxx.h>; pkg-config points inside
    # that folder, so add its parent too.
    flags["include_dirs"] += [os.path.dirname(d) for d in flags["include_dirs"]]
    flags["extra_compile_args"] += ["-O2", "-Wno-unused-function"]
    # The transport, tinytown._transport.ext, from ext/transport.pyx (which
    # includes the other .pyx files); the data model's Message encoder,
    # tinytown._codec, from ext/codec.pyx, which needs no hiredis.
    modules = [
        Extension(
            "tinytown._transport.ext",
            [os.path.join("ext", "transport.pyx")],
            **flags,
        ),
        Extension(
            "tinytown._codec",
            [os.path.join("ext", "codec.pyx")],
            extra_compile_args=["-O2"],
        ),
    ]
    return cythonize(
        modules,
        include_path=[os.path.join(HERE, "ext"), os.path.join(HERE, "ext", "includes")],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "embedsignature": True,
        },
    )


class build_py_with_notices(build_py):
    """Ship the license of a hiredis that the wheel will bundle.

    With TINYTOWN_HIREDIS_PREFIX (scripts/build_hiredis.sh), the wheel carries
    that libhiredis (BSD-3-Clause, whose notice must come with binaries), so
    its COPYING goes into the package as ``LICENSE.hiredis``.
    """

    def run(self) -> None:
        super().run()
        prefix = os.environ.get("TINYTOWN_HIREDIS_PREFIX")
        notice = prefix and os.path.join(prefix, "share", "licenses", "hiredis", "COPYING")
        if notice and os.path.exists(notice):
            self.copy_file(notice, os.path.join(self.build_lib, "tinytown", "LICENSE.hiredis"))


setup(ext_modules=extensions(), cmdclass={"build_py": build_py_with_notices})
