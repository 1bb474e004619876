"""What must never travel inside a job sent to a Dask scheduler: credentials.

A job's task (the command line) and every task the job submits (their arguments hold the
storage options and URLs) stay on the scheduler as they were sent, where every client of
that scheduler can read them, TLS or not. `credential_findings` looks through a command's
storage options (at any depth) and URLs for anything that looks like a credential, and says
*where* it is (an option path such as ``client_kwargs.headers.Authorization``, or the
option holding a URL), never its value, so that the command can be refused before anything
is sent. The workers take their credentials from their own environment or from a file only
the user can read (`streamsolve.engine.storage_secrets`).

What counts as a credential (false alarms are cheap: the secrets file takes any option):

- an option whose name contains a credential word (``key``, ``secret``, ``token``,
  ``password``, ``auth``, ``cookie``, ``signature``, ``credential``, ...), at any depth,
  unless its value names a mechanism (``token="anon"``) or is empty, None or a boolean;
- any HTTP header except a few harmless ones (``User-Agent``, ``Accept``, ``Range``, ...);
- a URL, anywhere, with a user or password (``s3://TOKEN@bucket``,
  ``https://user:pass@proxy``) or a signed query string (``X-Amz-Signature``, ``sig``,
  ``token``, ...); Azure's ``abfs://container@account`` form is a container, not a user;
- a value that is an ``Authorization`` header or a PEM private key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, urlsplit

#: Option (or header, or query parameter) names that are credentials as a whole.
CREDENTIAL_NAMES = frozenset({"sig", "pwd", "pass", "psk"})
#: Words that make a name a credential wherever they appear in it (``-`` read as ``_``).
CREDENTIAL_WORDS = ("key", "secret", "password", "passwd", "token", "credential", "private",
                    "sas", "connection_string", "conn_str", "auth", "signature", "cookie",
                    "bearer")
#: Values of a credential-named option that name a mechanism, not a secret (gcsfs ``token``).
CREDENTIAL_MODES = frozenset({"anon", "google_default", "cloud", "browser", "cache"})
#: HTTP headers that carry no credential; any other header is refused.
HARMLESS_HEADERS = frozenset({
    "user-agent", "accept", "accept-encoding", "accept-language", "cache-control",
    "content-type", "range", "if-match", "if-none-match", "referer", "x-requested-with",
    "x-amz-request-payer", "x-amz-expected-bucket-owner"})
#: URL schemes whose ``name@host`` is a container in an account, not a user.
CONTAINER_AT_ACCOUNT_SCHEMES = frozenset({"abfs", "abfss", "az", "adl"})
_CREDENTIAL_VALUE = re.compile(r"^\s*(bearer|basic|token|digest|negotiate)\s+\S|"
                               r"-----BEGIN [A-Z ]*PRIVATE KEY-----", re.IGNORECASE)
_BARE_USERINFO = re.compile(r"^[^\s/:@]+:[^\s/@]+@[\w.\-\[\]]+")


def is_credential_name(name) -> bool:
    """Whether an option, header or query-parameter name says it holds a credential."""
    name = str(name).lower().replace("-", "_")
    return name in CREDENTIAL_NAMES or any(word in name for word in CREDENTIAL_WORDS)


def url_credential(url: str) -> str | None:
    """What in ``url`` is a credential ("a password in the URL", ...), or None."""
    if "://" not in url:
        return "a user and password before @" if _BARE_USERINFO.match(url) else None
    for part in url.split("::"):  # fsspec chains: simplecache::s3://...
        try:
            parsed = urlsplit(part)
            password = parsed.password
        except ValueError:
            continue
        if password:
            return "a password in the URL"
        if "@" in parsed.netloc and parsed.scheme.lower() not in CONTAINER_AT_ACCOUNT_SCHEMES:
            return "a user name or token before @ in the URL"
        if any(is_credential_name(name) for name, _ in parse_qsl(parsed.query,
                                                                 keep_blank_values=True)):
            return "a signed or token-bearing query string"
    return None


def _value_credential(value) -> str | None:
    if not isinstance(value, str):
        return None
    if _CREDENTIAL_VALUE.search(value):
        return "a credential value"
    return url_credential(value)


def option_credentials(options, prefix: str = "") -> Iterator[tuple[str, str | None]]:
    """(dotted option path, why or None) of every credential in nested storage options."""
    items = options.items() if isinstance(options, dict) else enumerate(options)
    for name, value in items:
        path = f"{prefix}{name}"
        if isinstance(name, str) and name.lower() == "headers" and isinstance(value, dict):
            yield from ((f"{path}.{header}", None) for header, v in value.items()
                        if str(header).lower() not in HARMLESS_HEADERS and v not in (None, ""))
        elif isinstance(name, str) and is_credential_name(name) and not _harmless(value):
            yield path, None
        elif isinstance(value, (dict, list, tuple)):
            yield from option_credentials(value, f"{path}.")
        elif (why := _value_credential(value)) is not None:
            yield path, why


def _harmless(value) -> bool:
    return value is None or isinstance(value, bool) or value == "" or (
        isinstance(value, str) and value in CREDENTIAL_MODES)


def credential_findings(storage_options: dict | None,
                        urls: Iterable[tuple[str, str]]) -> list[str]:
    """Where credentials are in a command: ``--storage-options PATH`` entries and the labels
    of ``urls`` (``(label, url)`` pairs, e.g. ``("--store", "s3://...")``), each with what
    was found; never a value."""
    options = storage_options if isinstance(storage_options, dict) else {}
    found = [f"--storage-options {path}" + (f" ({why})" if why else "")
             for path, why in option_credentials(options)]
    for label, url in urls:
        why = url_credential(url) if "://" in url else None
        if why:
            found.append(f"{label} ({why})")
    return found
