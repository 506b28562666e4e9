"""Structure text from outside is parsed and checked in worker processes, never in the caller.

pymatgen's CIF reader, its neighbour lists and spglib are native or quadratic code: a crafted
file can crash them (a segmentation fault ends the whole process), exhaust memory or run for
hours. The cheap bounds of :mod:`tools.structure` refuse every such input known; this module
makes the unknown ones cost one call, not the MCP server, the chat or a batch:

- each task runs in a worker process (``python -m tools.sandbox``) with an address-space limit
  (``SANDBOX_MEMORY`` beyond what its imports take) and no core dumps;
- the caller waits at most ``SANDBOX_TIMEOUT`` seconds, then kills the worker;
- a worker that died or was killed is replaced by a fresh one at the next call, and the call
  that met it gets a :class:`SandboxError` saying what happened.

Workers are started on first use and kept (their imports take seconds), at most
``GENMS_SANDBOX_WORKERS`` (default 2) at once; callers beyond that wait for a free one.
Messages are length-prefixed JSON over the worker's stdin and a private copy of its stdout.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from tools.limits import SANDBOX_MEMORY, SANDBOX_TIMEOUT

START_TIMEOUT = 180.0  # s for a worker's imports (pymatgen, SMACT, the formula index) on a busy machine
_HEADER = struct.Struct("!I")


class SandboxError(RuntimeError):
    """A task the worker could not finish (timed out, crashed, out of memory); the message says which."""


class _Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tools.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        try:
            ready = self._receive(START_TIMEOUT)
        except (_WorkerLost, ValueError) as exc:
            self.kill()
            raise SandboxError(f"the structure worker did not start ({exc or 'no answer'})") from None
        if ready != {"ready": True}:
            self.kill()
            raise SandboxError("the structure worker did not start")

    def call(self, task: str, arguments: dict, timeout: float) -> Any:
        body = json.dumps({"task": task, "arguments": arguments}).encode()
        try:
            self.process.stdin.write(_HEADER.pack(len(body)) + body)
            self.process.stdin.flush()
        except OSError as exc:
            raise _WorkerLost(self._death()) from exc
        answer = self._receive(timeout)
        if "error" in answer:
            raise SandboxError(answer["error"])
        return answer["result"]

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        header = self._read(_HEADER.size, deadline)
        return json.loads(self._read(_HEADER.unpack(header)[0], deadline))

    def _read(self, size: int, deadline: float) -> bytes:
        stream, data = self.process.stdout, b""
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                raise _WorkerLost(None)
            chunk = os.read(stream.fileno(), size - len(data))
            if not chunk:
                raise _WorkerLost(self._death())
            data += chunk
        return data

    def _death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"crashed ({name})"
        return f"exited with status {code}"

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


class _WorkerLost(Exception):
    """The worker died (the reason) or did not answer in time (``None``)."""

    def __init__(self, reason: str | None):
        super().__init__(reason)
        self.reason = reason


class _Pool:
    """Workers started on demand, at most ``size``; a lost worker is dropped and its slot freed."""

    def __init__(self, size: int):
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(size)

    def run(self, task: str, arguments: dict, timeout: float) -> Any:
        with self.slots:
            try:
                worker = self.idle.get_nowait()
            except queue.Empty:
                worker = _Worker()
            try:
                result = worker.call(task, arguments, timeout)
            except _WorkerLost as lost:
                worker.kill()
                if lost.reason is None:
                    raise SandboxError(f"took longer than {timeout:g} s and was stopped") from None
                raise SandboxError(f"the worker {lost.reason} on this input") from None
            except BaseException:
                worker.kill()  # a half-read answer would desynchronise the pipe
                raise
            self.idle.put(worker)
            return result

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().kill()
            except queue.Empty:
                return


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def run_isolated(task: str, arguments: dict, timeout: float | None = None) -> Any:
    """Run ``task`` (a name in :data:`TASKS`) on JSON ``arguments`` in a worker; its JSON result.

    Raises :class:`SandboxError` when the worker times out (``timeout`` s, default
    ``GENMS_SANDBOX_TIMEOUT`` or ``SANDBOX_TIMEOUT``), crashes or runs out of memory; the next
    call gets a fresh worker.
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(max(1, int(os.environ.get("GENMS_SANDBOX_WORKERS", "2"))))
    if timeout is None:
        timeout = float(os.environ.get("GENMS_SANDBOX_TIMEOUT", SANDBOX_TIMEOUT))
    return _POOL.run(task, arguments, timeout)


def shutdown() -> None:
    """Stop the idle workers (they also end with the process that started them)."""
    if _POOL is not None:
        _POOL.close()


# --- the worker side ------------------------------------------------------------------------------


def _check_structure(text: str, label: str | None) -> dict:
    from tools.checks import check_structure_text

    _inject_fault(text)
    return check_structure_text(text, label)


def _read_structure(text: str, label: str) -> dict:
    """The structure as pymatgen's dict, or ``{"error": reason}`` for unreadable text."""
    from tools.structure import StructureError, read_structure_text

    _inject_fault(text)
    try:
        return {"structure": read_structure_text(text, label).as_dict()}
    except StructureError as exc:
        return {"error": str(exc)}


def _crash_for_tests(how: str) -> None:
    """Fail the way native code does, so tests can show that the caller survives it."""
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "memory":  # more than the worker may have, at once (quick even on a busy machine)
        bytearray(2 * SANDBOX_MEMORY)
    elif how == "hang":
        while True:
            time.sleep(1)


FAULT_PREFIX = "#genms-sandbox-fault:"
TESTING = os.environ.get("GENMS_SANDBOX_TEST_TASKS") == "1"


def _inject_fault(text: str) -> None:
    """With ``GENMS_SANDBOX_TEST_TASKS=1`` only: a text starting ``#genms-sandbox-fault:HOW`` fails as HOW
    says, so tests can prove end to end (CLI, MCP) that a crashing input costs one item."""
    if TESTING and isinstance(text, str) and text.startswith(FAULT_PREFIX):
        _crash_for_tests(text[len(FAULT_PREFIX):].split(None, 1)[0])


TASKS = {"check_structure": _check_structure, "read_structure": _read_structure}
if TESTING:
    TASKS["crash"] = _crash_for_tests


def _limit_resources() -> None:
    """No core dumps; address space capped at what the imports took + ``SANDBOX_MEMORY``.

    The cap needs Linux (``/proc/self/statm``, an enforced RLIMIT_AS); elsewhere (macOS) the
    worker runs without it, still isolated and still under the caller's time limit.
    """
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with open("/proc/self/statm") as handle:  # the first field is the address space in pages
            current = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + SANDBOX_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


def serve() -> None:
    """Worker loop: answer length-prefixed JSON tasks on stdin until it closes."""
    import warnings

    warnings.simplefilter("ignore")
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of the libraries must not corrupt the answers
    import tools.checks  # noqa: F401  (the imports every task needs, before the memory limit)

    _limit_resources()
    requests = sys.stdin.buffer

    def send(message: dict) -> None:
        body = json.dumps(message).encode()
        channel.write(_HEADER.pack(len(body)) + body)
        channel.flush()

    send({"ready": True})
    while header := requests.read(_HEADER.size):
        message = json.loads(requests.read(_HEADER.unpack(header)[0]))
        try:
            send({"result": TASKS[message["task"]](**message["arguments"])})
        except MemoryError:
            send({"error": "ran out of memory on this input"})
        except Exception as exc:  # an unexpected failure of this one input, reported as its error
            send({"error": f"failed on this input: {type(exc).__name__}: {str(exc)[:300]}"})


if __name__ == "__main__":
    serve()
