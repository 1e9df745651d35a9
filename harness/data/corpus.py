"""The built-in offline corpus: English prose that every Python installation already holds.

No third-party text ships with the harness. ``builtin_documents()`` gathers, at run time:

1. the docstrings of a fixed, sorted list of standard-library modules (``STDLIB_MODULES``): each
   module's own docstring, then those of its public classes and functions (sorted by name), then
   those of the methods and properties of each class (sorted by name), all read with
   ``inspect.getdoc``;
2. the topics of the Python language reference that ``pydoc`` ships (``pydoc_data.topics``,
   sorted by topic name), when the installation has them.

Each docstring and each topic is one *document*. Documents shorter than ``MIN_CHARS`` are
dropped, exact duplicates (inherited docstrings) are kept once, at their first occurrence. The
order is deterministic for a given Python version; the text itself changes between Python
versions, so every run records ``corpus_fingerprint()`` (a hash of the documents). Under
``python -OO`` docstrings are stripped and only the language-reference topics remain.

The corpus holds about 1.4 M characters (CPython 3.11), i.e. several hundred thousand tokens of
a real tokenizer: far more than the 16 x 2048 tokens of the default run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import sys
import warnings

MIN_CHARS = 200

# Mostly pure-Python modules (plus a few C ones with rich docstrings: builtins, io, itertools...)
# that import without side effects or deprecation warnings (checked on CPython 3.11). A module
# that a build lacks is skipped; the fingerprint shows the difference.
STDLIB_MODULES: tuple[str, ...] = (
    "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.locks",
    "asyncio.streams", "asyncio.tasks", "asyncio.transports", "base64", "bdb", "builtins",
    "calendar", "cmd", "code", "codecs", "collections", "compileall",
    "concurrent.futures._base", "concurrent.futures.process", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest",
    "email._header_value_parser", "email.charset", "email.generator", "email.header",
    "email.headerregistry", "email.message", "email.parser", "email.policy", "email.utils",
    "enum", "filecmp", "fileinput", "fractions", "ftplib", "functools", "getopt", "gettext",
    "graphlib", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client",
    "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib.abc",
    "importlib.metadata", "importlib.util", "inspect", "io", "ipaddress", "itertools", "json",
    "json.decoder", "json.encoder", "locale", "logging", "logging.config", "logging.handlers",
    "lzma", "mailbox", "math", "mimetypes", "multiprocessing.managers", "multiprocessing.pool",
    "netrc", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "profile", "pstats",
    "pydoc", "queue", "random", "re", "selectors", "shelve", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "statistics", "string", "struct", "subprocess", "sys",
    "sysconfig", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "types", "typing", "unittest.case", "unittest.loader", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "wsgiref.handlers", "wsgiref.validate", "xml.dom.minidom", "xml.dom.pulldom",
    "xml.etree.ElementTree", "xml.sax.handler", "xml.sax.xmlreader", "xmlrpc.client",
    "xmlrpc.server", "zipfile", "zipimport",
)  # fmt: skip


# Module attributes that programs replace at run time (pytest swaps sys.unraisablehook, IPython
# sys.excepthook, ...): left out so that the corpus does not depend on who runs it.
_REPLACEABLE = ("excepthook", "unraisablehook", "displayhook", "breakpointhook", "showwarning",
                "formatwarning")  # fmt: skip


def _module_docstrings(module) -> list[str]:
    out = [inspect.getdoc(module)]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or name in _REPLACEABLE:
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        out.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if not (inspect.isroutine(member) or isinstance(member, property)):
                    continue
                # Skip what other libraries patch into stdlib classes (transformers adds
                # logging.Logger.warning_once): the corpus must not depend on what is imported.
                origin = getattr(getattr(member, "fget", member), "__module__", None)
                if origin not in (None, module.__name__):
                    continue
                out.append(inspect.getdoc(member))
    return [d for d in out if d]


def _reference_topics() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it
        return []
    return [topics[k] for k in sorted(topics)]


@functools.cache
def _documents() -> tuple[str, ...]:
    texts: list[str] = []
    for name in STDLIB_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(name)
            except Exception:  # absent in this build (e.g. no lzma): skipped, the hash shows it
                continue
            texts.extend(_module_docstrings(module))
    texts.extend(_reference_topics())
    seen: set[str] = set()
    docs = []
    for text in texts:
        text = text.strip()
        if len(text) >= MIN_CHARS and text not in seen:
            seen.add(text)
            docs.append(text)
    return tuple(docs)


def builtin_documents() -> list[str]:
    """The built-in corpus as a list of documents (a new list; the texts are cached).

    Guarantees: deterministic for a given Python build; every document has at least
    ``MIN_CHARS`` characters; no two documents are equal.
    """
    return list(_documents())


@functools.cache
def corpus_fingerprint() -> str:
    """First 16 hex digits of the SHA-256 of the documents (NUL-separated, UTF-8)."""
    h = hashlib.sha256()
    for doc in _documents():
        h.update(doc.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def corpus_info() -> dict:
    """What a result records about the built-in corpus."""
    docs = _documents()
    return {
        "source": "Python standard library docstrings + pydoc language-reference topics",
        "python": ".".join(map(str, sys.version_info[:3])),
        "num_documents": len(docs),
        "chars": sum(len(d) for d in docs),
        "fingerprint": corpus_fingerprint(),
    }
