"""Sphinx configuration: the guides (Markdown, MyST) and the API reference
generated from the public docstrings (autodoc). Built by scripts/test.sh
(scripts/build_docs.sh) with warnings as errors."""

from __future__ import annotations

import os
import sys

# The package imported from the checkout (an installed tinytown would do too).
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

from tinytown import __version__  # noqa: E402 - after the sys.path line above

project = "tinytown"
version = release = __version__
author = "tinytown contributors"
copyright = "tinytown contributors"  # noqa: A001 - Sphinx's name
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Every reference to tinytown's own API must resolve (nitpicky): a renamed or
# removed name fails the build. The standard library's inventory would have
# to be fetched from the network, so its names are left as plain text; so are
# the private classes that public signatures mention (internal modules).
nitpicky = True
_STDLIB = ("asyncio", "collections", "datetime", "os", "pathlib", "ssl", "subprocess",
           "typing", "uuid")
nitpick_ignore_regex = [
    (r"py:.*", rf"({'|'.join(_STDLIB)})(\..*)?"),
    (r"py:class", r"tinytown\.(enums\.WireEnum|ids\.UuidId|keys\.TownKeys|address\.Address)"),
]
