"""How ``genms mcp`` may serve: transport, bind address, bearer token, Host and Origin allow lists.

Kept apart from :mod:`agent.mcp_server` (which imports every tool) so that ``genms mcp`` refuses
an unsafe or incomplete configuration at once, before loading the server.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools import limits

DEFAULT_PORT = 8765
MIN_TOKEN_LENGTH = limits.MIN_TOKEN_LENGTH
TOKEN_ENV = "GENMS_MCP_TOKEN"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class ServeConfigError(ValueError):
    """A transport configuration that the server refuses to start with; the message says why."""


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def is_wildcard(host: str) -> bool:
    """0.0.0.0, :: (in any spelling), '' or '*': every address of the machine."""
    if host.strip() in {"", "*"}:
        return True
    address = _ip(host)
    return address is not None and address.is_unspecified


# A host name as clients may write it in a URL (letters, digits, '-', '_', dots between labels).
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*$")
# A bearer token (RFC 6750 b64token): sent in an HTTP header, so printable ASCII without spaces.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
_ORIGIN = re.compile(r"^https?://[^\s/?#@*]+$")


def _host_spellings(name: str) -> list[str]:
    """How a Host header writes ``name`` (without the port): IPv6 in brackets, as given and compressed."""
    address = _ip(name)
    if address is None:
        if not _HOST_NAME.match(name):
            raise ServeConfigError(f"not a host name or IP address: {name!r}")
        return [name.lower()]
    if address.version == 6:
        given = (name[1:-1] if name.startswith("[") else name).lower()
        return list(dict.fromkeys([f"[{given}]", f"[{address.compressed}]"]))
    return [str(address)]


def _parse_allowed_host(entry: str, port: int) -> tuple[str, int]:
    """``NAME``, ``NAME:PORT``, ``[IPv6]`` or ``[IPv6]:PORT`` (a bare IPv6 address takes the server's port)."""
    text = entry.strip()
    given_port: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (text[close + 1:] and not text[close + 1:].startswith(":")):
            raise ServeConfigError(f"--allowed-host {entry!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        name, given_port = text[: close + 1], (text[close + 2:] if text[close + 1:] else None)
    elif text.count(":") == 1:
        name, given_port = text.split(":")
    else:
        name = text
    if "*" in name or not name.strip("[]"):
        raise ServeConfigError(f"--allowed-host {entry!r}: name the host clients use; wildcards would turn the Host check off")
    if given_port is not None and not (given_port.isdigit() and 1 <= int(given_port) <= 65535):
        raise ServeConfigError(f"--allowed-host {entry!r}: the port must be a number from 1 to 65535")
    return name, int(given_port) if given_port else port


@dataclass(frozen=True)
class HttpSecurity:
    """The Host and Origin header values the HTTP transport accepts (lower case, exact)."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    def settings(self):
        """The same lists for the SDK's own check (``streamable_http_app(transport_security=...)``)."""
        from mcp.server.transport_security import TransportSecuritySettings

        return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=list(self.hosts),
                                         allowed_origins=list(self.origins))


def http_security(host: str, port: int, allowed_hosts: Sequence[str] = (),
                  allowed_origins: Sequence[str] = ()) -> HttpSecurity:
    """The Host/Origin allow lists for a server bound to ``host``:``port``.

    The names the server answers to are the bind address (both spellings of an IPv6 address),
    ``localhost`` and the loopback addresses for a loopback bind, and ``allowed_hosts``
    (``NAME`` or ``NAME:PORT``). A wildcard bind answers for any name that reaches the
    machine, so it needs ``allowed_hosts``; it also accepts the loopback names. Allowed
    Origins are ``http://`` and ``https://`` forms of those Host values, and ``allowed_origins``.
    """
    if len(allowed_hosts) + len(allowed_origins) > limits.MAX_ALLOWED_HOSTS:
        raise ServeConfigError(f"at most {limits.MAX_ALLOWED_HOSTS} --allowed-host and --allowed-origin entries")
    names: list[tuple[str, int]] = []
    if is_wildcard(host):
        if not allowed_hosts:
            raise ServeConfigError(
                f"refusing to serve on {host or '*'} without --allowed-host: a wildcard address answers for every name "
                "that reaches this machine, so the Host check (against DNS rebinding) needs the names clients use; pass "
                "--allowed-host NAME for each (e.g. --allowed-host my-host.example --allowed-host 192.168.1.5), or bind "
                "one address with --host")
        names += [(name, port) for name in LOOPBACK_NAMES]
    else:
        names.append((host, port))
        if is_loopback(host):
            names += [(name, port) for name in (LOOPBACK_NAMES if host.lower() == "localhost" else ("localhost",))]
    names += [_parse_allowed_host(entry, port) for entry in allowed_hosts]

    hosts: list[str] = []
    origins: list[str] = []
    for name, name_port in names:
        for spelled in _host_spellings(name):
            hosts.append(f"{spelled}:{name_port}")
            origins += [f"http://{spelled}:{name_port}", f"https://{spelled}:{name_port}"]
            if name_port == 80:  # default ports: clients leave them out
                hosts.append(spelled)
                origins.append(f"http://{spelled}")
            elif name_port == 443:
                hosts.append(spelled)
                origins.append(f"https://{spelled}")
    for entry in allowed_origins:
        origin = entry.strip().rstrip("/").lower()
        if not _ORIGIN.match(origin):
            raise ServeConfigError(f"--allowed-origin {entry!r}: write an origin as http://HOST:PORT or https://HOST")
        origins.append(origin)
    return HttpSecurity(hosts=tuple(dict.fromkeys(hosts)), origins=tuple(dict.fromkeys(origins)))


def normalise_token(token: str | None) -> str | None:
    """The token without surrounding whitespace; None for none or an empty one."""
    if token is None:
        return None
    return token.strip() or None


def read_token_file(path: str | os.PathLike) -> str:
    """The bearer token in the first line of ``path``, which other users must not be able to read."""
    path = Path(path)
    try:  # non-blocking: a FIFO does not hang the open; a folder opens and is refused below
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ServeConfigError(f"--token-file {path}: not a regular file")
            if os.name == "posix" and info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
                raise ServeConfigError(
                    f"--token-file {path}: other users can read or write it; restrict it with chmod 600 {path}")
            data = os.read(fd, limits.MAX_TOKEN_FILE_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ServeConfigError(f"--token-file {path}: {exc.strerror or exc}") from None
    if len(data) > limits.MAX_TOKEN_FILE_BYTES:
        raise ServeConfigError(f"--token-file {path}: larger than {limits.MAX_TOKEN_FILE_BYTES} bytes; put the token alone on its first line")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ServeConfigError(f"--token-file {path}: not UTF-8 text") from None
    token = normalise_token(lines[0] if lines else None)
    if token is None:
        raise ServeConfigError(f"--token-file {path}: the first line is empty; put the token there")
    return token


def check_transport(transport: str, host: str, allow_remote: bool, token: str | None,
                    allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = (),
                    port: int = DEFAULT_PORT) -> HttpSecurity | None:
    """Refuse unsafe or incomplete configurations with a message that says what to do.

    Returns the Host/Origin allow lists for HTTP (None for stdio).
    """
    if transport not in {"stdio", "http"}:
        raise ServeConfigError(f"unknown transport {transport!r}; use stdio or http")
    if transport == "stdio":
        return None
    if not is_loopback(host):
        if not allow_remote:
            raise ServeConfigError(
                f"refusing to serve on {host}: only 127.0.0.1 is served by default; to accept connections from "
                f"other machines pass --allow-remote and a bearer token ({TOKEN_ENV} or --token-file)")
        if not token:
            raise ServeConfigError(
                f"refusing to serve on {host} without a bearer token: set {TOKEN_ENV} or pass --token-file PATH "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ServeConfigError(f"the bearer token is too short: use at least {MIN_TOKEN_LENGTH} characters")
        if len(token) > limits.MAX_TOKEN_LENGTH:
            raise ServeConfigError(f"the bearer token is too long: use at most {limits.MAX_TOKEN_LENGTH} characters")
        if not _TOKEN.match(token):
            raise ServeConfigError("the bearer token must be letters, digits and - . _ ~ + / (then = padding), "
                                   "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return http_security(host, port, allowed_hosts, allowed_origins)
