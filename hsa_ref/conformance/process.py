"""A port in its own process: started, fed one request at a time, watched, restarted.

:class:`PortProcess` runs a command that speaks ``hsa-port/1`` (:mod:`.protocol`) on its
stdin and stdout. Each exchange has a time limit; a crash, an exit, a malformed line or a hang
ends the process and becomes a :class:`PortFailure` that names what happened (with the exit
status and the tail of the port's stderr), and the next request starts a fresh process. The
port shares nothing with the harness but these lines: whatever it does to its own memory,
threads or exit path stays there.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Sequence

from .protocol import Declaration, ProtocolError, StartError, parse_declaration

__all__ = ["STDERR_TAIL", "PortFailure", "PortProcess"]

STDERR_TAIL = 2000
"""How many characters of the port's stderr a failure quotes."""


class PortFailure(Exception):
    """The port crashed, exited, hung or wrote something that is not a reply; ``usage`` when
    it could not start because of how it was asked to (a bad ``--impl``)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


class PortProcess:
    """A running port: :meth:`start` it (reads its declaration), then :meth:`exchange` lines.

    ``command`` is the program and its arguments; ``timeout`` (seconds) bounds the start and
    every exchange. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout: float | None = 60.0,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not command:
            raise ValueError("the port's command is empty")
        self.command = list(command)
        self.timeout = timeout
        self.cwd, self.env = cwd, env
        self.declaration: Declaration | None = None
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: deque[str] = deque()
        self._stderr_size = 0

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> PortProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Declaration:
        """Start the process and read its declaration (:class:`PortFailure` if it does not
        give one in time, or gives a different one after a restart)."""
        self._spawn()
        line = self._read_line("its declaration")
        try:
            declaration = parse_declaration(line)
        except StartError as exc:
            self.close()
            raise PortFailure(f"the port could not start: {exc}", usage=exc.usage) from None
        except ProtocolError as exc:
            raise self._failed(f"the port's declaration is not valid: {exc}") from None
        if self.declaration is not None and declaration != self.declaration:
            raise self._failed("the port declared something else after a restart")
        self.declaration = declaration
        return declaration

    def close(self) -> None:
        """End the process: close its stdin, give it a moment to exit, then kill it (and any
        process it started)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        _kill(proc)

    # ------------------------------------------------------------------ exchanges
    def exchange(self, line: str) -> str:
        """Send one request line and return the reply line; :class:`PortFailure` (the process
        ended, the next exchange starts a fresh one) when the port does not answer in time."""
        if self._proc is None:
            self.restarts += self.declaration is not None
            self.start()
        proc = self._proc
        data = line.encode("utf-8") + b"\n"
        writer = threading.Thread(target=_write, args=(proc, data), daemon=True)
        writer.start()
        return self._read_line("its reply")

    # ------------------------------------------------------------------ internals
    def _spawn(self) -> None:
        self._lines = queue.Queue()
        self._stderr.clear()
        self._stderr_size = 0
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            raise PortFailure(f"cannot start {self.command[0]!r}: {exc}") from None
        threading.Thread(target=self._pump_stdout, args=(self._proc,), daemon=True).start()
        threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True).start()

    def _pump_stdout(self, proc: subprocess.Popen[bytes]) -> None:
        lines = self._lines
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw)
        lines.put(None)

    def _pump_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):
            text = chunk.decode("utf-8", "replace")
            self._stderr.append(text)
            self._stderr_size += len(text)
            while self._stderr_size > 4 * STDERR_TAIL and len(self._stderr) > 1:
                self._stderr_size -= len(self._stderr.popleft())

    def _read_line(self, what: str) -> str:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                raw = self._lines.get(timeout=left)
            except queue.Empty:
                raise self._failed(
                    f"timed out: the port did not send {what} within {self.timeout:g} s"
                ) from None
            if raw is None:
                raise self._failed(f"the port closed its output before {what}")
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise self._failed(
                    f"the port wrote bytes that are not UTF-8: {raw[:80]!r}"
                ) from None
            if text:
                return text

    def _failed(self, what: str) -> PortFailure:
        """Stop the process and describe the failure with its exit status and stderr."""
        proc, self._proc = self._proc, None
        status = None
        if proc is not None:
            time.sleep(0.05)  # a process that is ending: let it end
            status = proc.poll()
            _kill(proc)
        time.sleep(0.05)  # let the stderr pump take what the process wrote last
        parts = [what]
        if proc is not None and status is None:
            parts.append("the harness stopped the process")
        elif status is not None and status < 0:
            name = signal.Signals(-status).name if -status in signal.valid_signals() else ""
            parts.append(f"the process died of signal {-status} {name}".rstrip())
        elif status is not None:
            parts.append(f"the process exited with status {status}")
        tail = "".join(self._stderr)[-STDERR_TAIL:].strip()
        if tail:
            parts.append("its stderr ended with:\n" + tail)
        return PortFailure("; ".join(parts[:2]) + ("\n" + parts[2] if len(parts) > 2 else ""))


def _write(proc: subprocess.Popen[bytes], data: bytes) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.flush()
    except (OSError, ValueError):
        pass  # the port is gone: the reader reports it


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process and its process group; reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if stream:
                stream.close()
        except OSError:
            pass
