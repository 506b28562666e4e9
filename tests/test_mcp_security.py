"""genms mcp attacked: the HTTP transport's Host/Origin checks, bearer tokens, and what errors tell clients.

The real server runs as a subprocess on each kind of bind address (127.0.0.1, 127.0.0.2, ::1
spelled out, and 0.0.0.0 with a token), all started at once; raw HTTP probes send a real
JSON-RPC ``initialize`` with foreign Host and Origin headers (refused) and with the server's own
(accepted), and the SDK's client makes a tool call through each. Only loopback addresses are
contacted. Tool failures are provoked in process (a dependency that raises with a server path)
and over HTTP (a missing and a corrupt run record in the server's GENMS_HOME).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from tests.test_mcp import GENMS, ROOT, TOOLS, server_env, stop

TOKEN = "s3cret-token-for-tests-" + "y" * 16
REMOTE_NAME = "genms.test"  # the --allowed-host of the wildcard bind (never resolved: sent only as a Host header)
INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}}})
MISSING_RUN = "20000101T000000-abcdef"
CORRUPT_RUN = "20000102T000000-c0ffee"


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """One ``genms mcp --transport http`` subprocess and where to reach it."""

    bind: str  # --host as given
    connect: str  # the address clients connect to
    port: int
    process: subprocess.Popen
    log: Path
    token: str | None = None

    @property
    def netloc(self) -> str:
        return f"[{self.connect}]:{self.port}" if ":" in self.connect else f"{self.connect}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.netloc}/mcp"

    def probe(self, host: str | None = None, origin: str | None = None, token: str | None = "default",
              method: str = "POST", path: str = "/mcp", extra: list[tuple[str, str]] = ()) -> int:
        """The status of one raw request (an initialize POST by default) with these headers."""
        token = self.token if token == "default" else token
        connection = http.client.HTTPConnection(self.connect, self.port, timeout=60)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            connection.putheader("Host", host or self.netloc)
            for name, value in [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream"),
                                *([("Origin", origin)] if origin else []),
                                *([("Authorization", f"Bearer {token}")] if token else []), *extra]:
                connection.putheader(name, value)
            body = INITIALIZE.encode() if method == "POST" else b""
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            answer = connection.getresponse()
            answer.read()
            session = answer.getheader("mcp-session-id")
        finally:
            connection.close()
        if session:  # close the session it opened, so probes do not pile up sessions
            self._delete(session, host or self.netloc)
        return answer.status

    def _delete(self, session: str, host: str) -> None:
        connection = http.client.HTTPConnection(self.connect, self.port, timeout=60)
        try:
            headers = {"Host": host, "mcp-session-id": session, **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
            connection.request("DELETE", "/mcp", headers=headers)
            connection.getresponse().read()
        finally:
            connection.close()


def start(bind: str, connect: str, log: Path, *args: str, env: dict[str, str]) -> Server:
    port = free_port(connect if bind not in {"0.0.0.0", "::"} else bind)
    with open(log, "w") as errlog:
        process = subprocess.Popen([GENMS, "mcp", "--transport", "http", "--host", bind, "--port", str(port), *args],
                                   env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
    return Server(bind, connect, port, process, log)


def wait_until_listening(server: Server, timeout: float = 240) -> None:
    """Poll until the server accepts a connection (or exits, or ``timeout`` passes: a generous bound for a busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"genms mcp --host {server.bind} exited {server.process.returncode}: {server.log.read_text()[-2000:]}")
        try:
            socket.create_connection((server.connect, server.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"genms mcp --host {server.bind} did not listen on {server.port}: {server.log.read_text()[-2000:]}")


def write_runs(home: Path) -> None:
    """A corrupt run record (run.json incomplete, results.json not JSON) in ``home``'s run store."""
    folder = home / "runs" / CORRUPT_RUN
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": CORRUPT_RUN, "request": "a spinel"}))
    (folder / "results.json").write_text("{not json")


BINDS = ["127.0.0.1", "127.0.0.2", "::1", "remote"]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("genms-home-security")
    write_runs(home)
    return home


@pytest.fixture(scope="module")
def servers(tmp_path_factory, home):
    """Every bind's server, started together (each takes seconds to import); stopped at the end."""
    logs = tmp_path_factory.mktemp("mcp-security")
    token_file = logs / "token"
    token_file.write_text(f"  {TOKEN}  \nignored second line\n")
    token_file.chmod(0o600)
    env = server_env(GENMS_HOME=str(home))
    plans = {
        "127.0.0.1": ("127.0.0.1", "127.0.0.1", ()),
        "127.0.0.2": ("127.0.0.2", "127.0.0.2", ()),
        "::1": ("0:0:0:0:0:0:0:1", "::1", ()),  # the spelling the SDK's own default did not recognise
        "remote": ("0.0.0.0", "127.0.0.1", ("--allow-remote", "--allowed-host", REMOTE_NAME, "--token-file", str(token_file))),
    }
    if not ipv6_loopback():
        del plans["::1"]
    with contextlib.ExitStack() as stack:
        started = {}
        for name, (bind, connect, args) in plans.items():
            server = start(bind, connect, logs / f"{name.replace(':', '_')}.log", *args, env=env)
            stack.callback(stop, server.process)
            started[name] = server
        started["remote"].token = TOKEN
        for server in started.values():
            wait_until_listening(server)
        yield started


@pytest.fixture(params=BINDS)
def server(request, servers) -> Server:
    if request.param not in servers:
        pytest.skip("this machine has no IPv6 loopback (::1)")
    return servers[request.param]


def own_hosts(server: Server) -> list[str]:
    """Host values a legitimate client of this server sends."""
    if server.bind == "0.0.0.0":
        return [f"{REMOTE_NAME}:{server.port}", f"127.0.0.1:{server.port}", f"localhost:{server.port}"]
    hosts = [server.netloc, f"localhost:{server.port}"]
    if server.bind == "0:0:0:0:0:0:0:1":
        hosts.append(f"[0:0:0:0:0:0:0:1]:{server.port}")
    return hosts


def test_own_host_names_are_accepted(server):
    for host in own_hosts(server):
        assert server.probe(host=host) == 200, host
        assert server.probe(host=host, origin=f"http://{host}") == 200, host
    assert server.probe(host=server.netloc.upper() if server.bind != "0.0.0.0" else f"GENMS.TEST:{server.port}") == 200


@pytest.mark.parametrize("foreign", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                     "{netloc}.evil.example", "localhost:1", "{connect_host}:1", "", "10.0.0.1:{port}"])
def test_a_foreign_host_header_is_refused(server, foreign):
    connect_host = f"[{server.connect}]" if ":" in server.connect else server.connect
    host = foreign.format(port=server.port, netloc=server.netloc, connect_host=connect_host)
    assert server.probe(host=host or " ") in {400, 421}, host
    if host:
        assert server.probe(host=host) == 421  # a valid but foreign name: the Host check itself refuses it
        assert server.probe(host=host, method="GET") == 421
        assert server.probe(host=host, path="/") == 421  # every path, not only the MCP endpoint


def test_the_host_of_another_loopback_address_is_refused(server):
    if server.bind == "0.0.0.0":
        pytest.skip("a wildcard bind answers on every loopback address")
    other = "127.0.0.1" if server.bind != "127.0.0.1" else "127.0.0.2"
    assert server.probe(host=f"{other}:{server.port}") == 421


def test_two_host_headers_are_refused(server):
    assert server.probe(host=server.netloc if server.bind != "0.0.0.0" else f"{REMOTE_NAME}:{server.port}",
                        extra=[("Host", "evil.example")]) in {400, 421}


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example", "null", "http://localhost:3000",
                                    "http://127.0.0.1:1", "http://{host}.evil.example", "file://"])
def test_a_foreign_origin_is_refused(server, origin):
    host = own_hosts(server)[0]
    assert server.probe(host=host, origin=origin.format(host=host)) == 403
    assert server.probe(host=host, origin=f"http://{host}", extra=[("Origin", "http://evil.example")]) == 403


def test_a_real_client_calls_a_tool(server):
    async def call():
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
            async with Client(streamable_http_client(server.url, http_client=http), mode="legacy") as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                return tools, await client.call_tool("check_formulas", {"formulas": ["SrTiO3"]})

    tools, result = anyio.run(call)
    assert tools == TOOLS
    assert not result.is_error and result.structured_content["results"][0]["valid"] is True


def test_remote_bind_checks_the_host_before_the_token(servers):
    remote = servers["remote"]
    good = f"{REMOTE_NAME}:{remote.port}"
    assert remote.probe(host="evil.example", token=TOKEN) == 421
    assert remote.probe(host="evil.example", token=None) == 421
    assert remote.probe(host=good, token=None) == 401
    assert remote.probe(host=good, token="wrong-" + TOKEN) == 401
    assert remote.probe(host=good, token=TOKEN, extra=[("Authorization", "Bearer other")]) == 401
    assert remote.probe(host=good, token=TOKEN, origin="http://evil.example") == 403
    assert remote.probe(host=good, token=TOKEN, origin=f"http://{good}") == 200


def genms_mcp(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([GENMS, "mcp", "--transport", "http", *args], env=server_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_a_wildcard_bind_needs_allowed_host_names():
    for host in ("0.0.0.0", "::", "0:0:0:0:0:0:0:0"):
        done = genms_mcp("--host", host, "--allow-remote", "--port", "1", GENMS_MCP_TOKEN=TOKEN)
        assert done.returncode == 2 and "--allowed-host" in " ".join(done.stderr.split()), done.stderr
    done = genms_mcp("--host", "0.0.0.0", "--allow-remote", "--allowed-host", "*", GENMS_MCP_TOKEN=TOKEN)
    assert done.returncode == 2 and "wildcards" in " ".join(done.stderr.split())


def test_a_token_on_the_command_line_is_warned_about():
    done = genms_mcp("--host", "0.0.0.0", "--allow-remote", "--token", TOKEN)  # refused (no --allowed-host) after the warning
    stderr = " ".join(done.stderr.split())
    assert "warning: --token shows in the process list" in stderr and "GENMS_MCP_TOKEN" in stderr and "--token-file" in stderr
    assert done.returncode == 2
    quiet = genms_mcp("--host", "0.0.0.0", "--allow-remote", GENMS_MCP_TOKEN=TOKEN)
    assert "warning" not in quiet.stderr and quiet.returncode == 2


def test_token_file(tmp_path):
    from agent.mcp_server import ServeConfigError, read_token_file

    path = tmp_path / "token"
    path.write_text(f"\t{TOKEN} \r\nsecond line\n")
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN
    for text, says in [("\n" + TOKEN, "first line is empty"), ("", "first line is empty"), (b"\xff\xfe", "UTF-8")]:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ServeConfigError, match=says):
            read_token_file(path)
    path.write_text(TOKEN)
    path.chmod(0o644)
    with pytest.raises(ServeConfigError, match="chmod 600"):
        read_token_file(path)
    with pytest.raises(ServeConfigError, match="not a regular file"):
        read_token_file(tmp_path)
    if hasattr(os, "mkfifo"):  # a FIFO neither hangs the open nor is read
        os.mkfifo(tmp_path / "fifo", 0o600)
        with pytest.raises(ServeConfigError, match="not a regular file"):
            read_token_file(tmp_path / "fifo")
    with pytest.raises(ServeConfigError, match="token-file"):
        read_token_file(tmp_path / "missing")

    done = genms_mcp("--host", "127.0.0.1", "--token-file", str(path))
    assert done.returncode == 2 and "chmod 600" in " ".join(done.stderr.split())
    path.chmod(0o600)
    done = genms_mcp("--host", "127.0.0.1", "--token-file", str(path), GENMS_MCP_TOKEN=TOKEN)
    assert done.returncode == 2 and "one way" in " ".join(done.stderr.split())
    path.write_text("short\n")
    done = genms_mcp("--host", "127.0.0.1", "--token-file", str(path))
    assert done.returncode == 2 and "too short" in done.stderr
    path.write_text("has spaces inside " + "z" * 20)
    done = genms_mcp("--host", "127.0.0.1", "--token-file", str(path))
    assert done.returncode == 2 and "letters, digits" in " ".join(done.stderr.split())


def test_allow_lists_per_bind_address():
    from agent.mcp_server import ServeConfigError, check_transport, http_security

    assert http_security("127.0.0.2", 8765).hosts == ("127.0.0.2:8765", "localhost:8765")
    assert set(http_security("0:0:0:0:0:0:0:1", 8765).hosts) == {"[0:0:0:0:0:0:0:1]:8765", "[::1]:8765", "localhost:8765"}
    remote = check_transport("http", "192.168.1.5", True, TOKEN, port=8765)
    assert remote.hosts == ("192.168.1.5:8765",) and "http://evil.example" not in remote.origins
    assert set(remote.origins) == {"http://192.168.1.5:8765", "https://192.168.1.5:8765"}
    named = http_security("0.0.0.0", 8765, ["my-host.example", "10.0.0.2:443", "[fe80::1]"])
    assert {"my-host.example:8765", "10.0.0.2:443", "10.0.0.2", "[fe80::1]:8765", "127.0.0.1:8765"} <= set(named.hosts)
    assert "https://10.0.0.2" in named.origins
    extra = http_security("127.0.0.1", 8765, allowed_origins=["http://localhost:6274/"])
    assert "http://localhost:6274" in extra.origins and extra.settings().enable_dns_rebinding_protection
    for hosts, origins in [(["*"], []), (["a b"], []), (["x:0"], []), ([], ["*"]), ([], ["null"]), ([], ["http://a/b"])]:
        with pytest.raises(ServeConfigError):
            http_security("127.0.0.1", 8765, hosts, origins)
    assert check_transport("stdio", "0.0.0.0", False, None) is None


# --- what errors tell clients ---------------------------------------------------------------------


def test_client_messages_name_no_server_paths():
    from agent.mcp_server import client_message

    home = str(Path.home())
    for message, shown in [
        ("no run 'x' in /tmp/pytest-of-me/genms-home0/runs", "no run 'x' in runs"),
        ("[Errno 2] No such file or directory: '/srv/genms/data/index.npz'", "[Errno 2] No such file or directory: 'index.npz'"),
        (f"cannot write {home}/.cache/genms/x.json.", "cannot write x.json."),
        (f"nothing under {home}", "nothing under <path>"),
        ("see ~/notes/a.md and C:\\Users\\me\\b.cif and file:///etc/passwd", "see a.md and b.cif and passwd"),
        ("E in eV/atom, P6_3/mmc, runs/x/cifs/01.cif, https://en.wikipedia.org/wiki/Spinel, genms://runs/a/report.md",
         "E in eV/atom, P6_3/mmc, runs/x/cifs/01.cif, https://en.wikipedia.org/wiki/Spinel, genms://runs/a/report.md"),
    ]:
        assert client_message(message) == shown
    assert len(client_message("x" * 100_000)) <= 1000


def call_in_process(name: str, arguments: dict, server=None):
    from agent.mcp_server import build_server

    async def call():
        async with Client(server or build_server()) as client:
            return await client.call_tool(name, arguments)

    return anyio.run(call)


def assert_short_reason(result, tool: str, secret: Path, kind: str = "PermissionError") -> None:
    text = result.content[0].text
    assert result.is_error, text
    assert f"{tool} failed: {kind}" in text and "Traceback" not in text and "File \"" not in text, text
    assert str(secret.parent) not in text and secret.name in text and len(text) <= 1000, text


class _Broken:
    def __init__(self, secret: Path):
        self.secret = secret

    def __call__(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self.secret))

    list = load = __call__


@pytest.mark.parametrize(("tool", "target", "arguments"), [
    ("check_formulas", "tools.checks.check_formulas", {"formulas": ["SrTiO3"]}),
    ("generate_structures", "tools.langchain_tools.generate_structures", {"formula": "MgAl2O4", "n": 1}),
    ("propose_formulas", "tools.langchain_tools.propose_formulas", {"request": "a spinel oxide", "n": 2}),
    ("retrieve_knowledge", "tools.langchain_tools.retrieve_knowledge", {"query": "spinel"}),
    ("recall_candidates", "tools.langchain_tools.recall_candidates", {"query": "spinels"}),
    ("lookup_material", "tools.lookup.lookup", {"formula": "TiO2"}),
    ("search_materials", "agent.search.run_search", {"request": "a spinel oxide", "proposals": 2, "formulas": 1,
                                                     "structures": 1, "rounds": 1, "relax_steps": 0}),
    ("list_runs", "agent.mcp_server._store", {}),
    ("get_run", "agent.mcp_server._store", {"run_id": MISSING_RUN}),
])
def test_an_unexpected_failure_is_a_short_tool_error(monkeypatch, tmp_path, tool, target, arguments):
    secret = tmp_path / "private" / "genms-index.npz"
    broken = _Broken(secret)
    monkeypatch.setattr(target, (lambda: broken) if target.endswith("_store") else broken)
    assert_short_reason(call_in_process(tool, arguments), tool, secret)


def test_a_tool_that_does_not_catch_its_failure_still_gives_a_short_reason(tmp_path):
    from agent.mcp_server import build_server

    secret = tmp_path / "private" / "weights.ckpt"
    server = build_server()

    def crash(n: int = 1) -> dict:
        """Fails the way a tool body with a bug would."""
        return {"read": secret.read_text()}

    server.add_tool(crash)
    assert_short_reason(call_in_process("crash", {}, server), "crash", secret, kind="FileNotFoundError")


def test_errors_over_http_name_no_server_paths(servers, home):
    server = servers["127.0.0.1"]

    async def calls():
        async with Client(server.url) as client:
            missing = await client.call_tool("get_run", {"run_id": MISSING_RUN})
            corrupt = await client.call_tool("get_run", {"run_id": CORRUPT_RUN})
            with pytest.raises(MCPError) as unread:
                await client.read_resource(f"genms://runs/{MISSING_RUN}/report.md")
            still = await client.call_tool("list_runs", {})
            return missing, corrupt, unread.value, still

    missing, corrupt, unread, still = anyio.run(calls)
    for text in (missing.content[0].text, corrupt.content[0].text, str(unread)):
        assert str(home) not in text and "/tmp" not in text and "Traceback" not in text, text
    assert missing.is_error and f"no run '{MISSING_RUN}' in runs" in missing.content[0].text
    assert corrupt.is_error and CORRUPT_RUN in corrupt.content[0].text  # refused as damaged (or failed), with its reason
    assert f"no run '{MISSING_RUN}'" in str(unread)
    assert not still.is_error  # the server keeps serving
    assert str(home) in server.log.read_text()  # the full message stays in the server's log
