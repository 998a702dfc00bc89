"""When a kernel dies mid-cell: what it printed that never arrived, and why it died.

Two halves, both read by the parent after the kernel is gone:

- ``StreamCopy``: the file every ipykernel dsagent starts appends its stream
  writes to (``streamcopy.py`` is the kernel's side). ``recover`` returns the
  text of one cell that IOPub did not deliver, as nbformat stream outputs
  marked ``{"dsagent": {"recovered": true}}``.
- ``MemoryWitness`` and ``death_reason``: the signal by name, the
  out-of-memory killer's evidence (the kernel's memory cgroup's ``oom_kill``
  counter, the kernel log from ``dmesg`` where readable), the kernel's peak
  memory, and what to do next.
"""

from __future__ import annotations

import re
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from dsagent.kernel_gateway.models import Output

__all__ = [
    "LAST_LINES_HEADING",
    "STREAM_COPY_ENV",
    "MEMORY_ADVICE",
    "MEMORY_DEATHS",
    "MemoryWitness",
    "StreamCopy",
    "death_reason",
    "last_lines",
    "peak_note",
    "stream_copy_arguments",
    "stream_copy_path",
    "STREAM_COPY_SCRIPT",
]

#: the kernel-side script, run by every ipykernel dsagent starts as an IPython startup file
STREAM_COPY_SCRIPT = Path(__file__).with_name("streamcopy.py")
#: the environment variable that tells a kernel where to keep its copy
STREAM_COPY_ENV = "DSAGENT_STREAM_COPY"
#: where a death's message starts quoting the last lines the kernel printed (backends that rewrite the reason keep what follows)
LAST_LINES_HEADING = "\nthe last lines it printed:\n"
#: the first line of every recovered output: says where the text came from
RECOVERED_NOTE = "[dsagent: recovered after the kernel died; this never arrived over Jupyter's IOPub]\n"
#: how many of the cell's last printed lines a death's message quotes
LAST_LINES = 5
#: what a cell can do about running out of memory (agents read this too)
MEMORY_ADVICE = "load less at once: read in chunks, select fewer columns, downcast dtypes, or del large objects"
#: words in a death's reason that mean memory ended it (then MEMORY_ADVICE follows it)
MEMORY_DEATHS = ("out-of-memory killer", "memory limit")

_STREAMS = {b"o": "stdout", b"e": "stderr"}
#: what the kernel log says when the OOM killer ends a process (global and cgroup OOM, kernels 4.x-6.x)
_OOM_LINE = re.compile(r"(?:Killed process|oom-kill:.*?,pid=)\s*(\d+)")
_SIGNAL_WORDS = {
    signal.SIGSEGV: "crashed with a segmentation fault (SIGSEGV), usually a bug in a C extension or a bad pointer (ctypes)",
    signal.SIGABRT: "aborted (SIGABRT): a C library gave up, often a failed assertion or allocation",
    signal.SIGBUS: "crashed with a bus error (SIGBUS): bad memory access, e.g. a memory-mapped file that shrank",
    signal.SIGFPE: "crashed with an arithmetic fault (SIGFPE) in native code",
    signal.SIGILL: "crashed with an illegal instruction (SIGILL): native code built for another CPU",
}


def stream_copy_arguments() -> tuple[str, ...]:
    """Kernel command-line options that make an ipykernel keep the stream copy (see ``streamcopy.py``)."""
    return (f"--IPKernelApp.exec_files={STREAM_COPY_SCRIPT}",)


class StreamCopy:
    """The parent's view of one kernel's stream-copy file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remove(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass

    def recover(self, msg_id: str, received: dict[str, int]) -> list[Output]:
        """The text cell ``msg_id`` wrote beyond the ``received`` characters per stream, as marked stream outputs, in order."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return []
        pieces: list[tuple[str, str]] = []
        written: dict[str, dict[str, int]] = {}  # characters of each request's streams before the record at hand
        current: dict[str, int] | None = None
        for kind, payload in _records(data):
            if kind == b"p":
                fields = payload.decode(errors="replace").split(" ")
                current = written.setdefault(fields[0], {"stdout": 0, "stderr": 0})
                if len(fields) == 3:  # the kernel started the file over: how much came before
                    current.update(stdout=int(fields[1]), stderr=int(fields[2]))
                current = current if fields[0] == msg_id else None
                continue
            name = _STREAMS.get(kind)
            if name is None or current is None:
                continue
            text = payload.decode("utf-8", "surrogatepass")
            start = current[name]
            current[name] = start + len(text)
            missing = text[max(0, received.get(name, 0) - start) :]
            if missing:
                pieces.append((name, missing))
        return _as_outputs(pieces)


def _records(data: bytes):
    """(kind, payload) of each record of the copy (format: ``streamcopy.py``); the first zero byte is the end (the file is sparse)."""
    stream = b"o"
    for piece in data.split(b"\0", 1)[0].split(b"\xff")[1:]:
        marker, text = piece[:1], piece[1:]
        if marker == b"p":
            line, _, text = text.partition(b"\n")
            yield marker, line
        elif marker in _STREAMS:
            stream = marker
        elif marker == b"0":  # an escaped NUL character of the current stream
            text = b"\0" + text
        if text:
            yield stream, text


def _as_outputs(pieces: list[tuple[str, str]]) -> list[Output]:
    outputs: list[Output] = []
    for name, text in pieces:
        if outputs and outputs[-1]["name"] == name:
            outputs[-1]["text"] += text
        else:
            outputs.append({"output_type": "stream", "name": name, "text": RECOVERED_NOTE + text, "metadata": {"dsagent": {"recovered": True}}})
    return outputs


def last_lines(outputs: list[Output], count: int = LAST_LINES) -> list[str]:
    """The last ``count`` non-empty lines of a cell's stream outputs (the recovery note left out)."""
    text = "".join(_text(o).removeprefix(RECOVERED_NOTE) for o in outputs if o.get("output_type") == "stream")
    return [line for line in text.splitlines() if line.strip()][-count:]


def _text(output: Output) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


@dataclass
class MemoryWitness:
    """What a kernel process's memory did, watched while it lives: read again only once it is gone.

    ``begin_cell`` notes the kernel's memory cgroup and its out-of-memory kill
    count; ``sample`` (on every liveness poll) the kernel's peak resident size
    (``VmHWM``). A death then compares.
    """

    pid: int | None = None
    peak_bytes: int = 0
    oom_file: Path | None = None
    oom_kills: int | None = None
    limit_bytes: int | None = None
    peak_virtual_bytes: int = 0

    def begin_cell(self, pid: int | None) -> None:
        if pid != self.pid:  # a new kernel (restart): its peaks from zero
            self.pid, self.peak_bytes, self.peak_virtual_bytes = pid, 0, 0
        # read each cell: a kernel can be moved to another cgroup while it lives
        self.oom_file, self.limit_bytes = _memory_cgroup(pid) if pid else (None, None)
        self.oom_kills = _oom_kills(self.oom_file)
        self.sample()

    def sample(self) -> None:
        if self.pid is None:
            return
        try:
            with open(f"/proc/{self.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmPeak:"):  # address space: what the sandbox's limit counts
                        self.peak_virtual_bytes = max(self.peak_virtual_bytes, int(line.split()[1]) * 1024)
                    elif line.startswith(b"VmHWM:"):  # resident: what the out-of-memory killer counts
                        self.peak_bytes = max(self.peak_bytes, int(line.split()[1]) * 1024)
                        return
        except (OSError, ValueError, IndexError):
            pass

    def oom_evidence(self) -> str | None:
        """How we know the out-of-memory killer ended the kernel, None if we do not (or cannot tell)."""
        kills = _oom_kills(self.oom_file)
        counted = kills is not None and self.oom_kills is not None and kills > self.oom_kills
        # the kernel log: its size when killed (which sampling misses), and the evidence where no counter is readable
        # (the counter counts every kill of the cgroup's processes, global OOM too: unchanged, there was none)
        rss = _oom_line_for(self.pid) if self.pid and (counted or self.oom_kills is None) else None
        if rss:
            self.peak_bytes = max(self.peak_bytes, rss)
        if counted:
            return "its memory cgroup counted an out-of-memory kill"
        return "the system log names it" if rss is not None else None

    def can_see_oom(self) -> bool:
        """Whether an out-of-memory kill of this kernel would have left evidence we can read."""
        return self.oom_kills is not None


def _memory_cgroup(pid: int) -> tuple[Path | None, int | None]:
    """The file with the out-of-memory kill count of ``pid``'s memory cgroup (v1 or v2), and that cgroup's limit."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return _existing(folder / "memory.oom_control"), _limit(folder / "memory.limit_in_bytes")
    for line in lines:
        if line.startswith("0::"):  # cgroup v2 (unified), mounted at /sys/fs/cgroup or below it
            path = line[3:].lstrip("/")
            for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                events = _existing(root / path / "memory.events")
                if events is not None:
                    return events, _limit(root / path / "memory.max")
    return None, None


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _limit(path: Path) -> int | None:
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):  # "max": no limit
        return None
    return value if value < psutil.virtual_memory().total else None


def _oom_kills(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _oom_line_for(pid: int) -> int | None:
    """The resident size (bytes) the kernel log gives for ``pid``'s out-of-memory kill, None without one (or no log)."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in reversed(log.splitlines()):
        match = _OOM_LINE.search(line)
        if match and int(match.group(1)) == pid:
            rss = re.search(r"anon-rss:(\d+)kB", line)
            return int(rss.group(1)) * 1024 if rss else 0
    return None


def death_reason(exit_code: int | None, witness: MemoryWitness, *, memory_limit: str = "") -> str:
    """How the kernel ended: the signal by name, the out-of-memory killer's evidence and, for memory, what to do.

    ``exit_code`` is negative for a signal (Popen's convention); ``memory_limit``
    names a limit the backend set itself (the sandbox's) when the kernel came near it.
    """
    if exit_code is None:
        return "the kernel process ended"
    if exit_code >= 0:
        return f"the kernel process exited with code {exit_code}"
    sig = _signal(-exit_code)
    if sig == signal.SIGKILL:
        evidence = witness.oom_evidence()
        if evidence:
            return _oom_sentence(evidence, witness)
        if memory_limit:
            used = f" (it used {_size(witness.peak_virtual_bytes)} of address space)" if witness.peak_virtual_bytes else ""
            return f"the kernel was killed by SIGKILL at {memory_limit}{used}"
        unseen = "" if witness.can_see_oom() else ", or the out-of-memory killer: no evidence of it is readable here"
        return f"the kernel was killed by SIGKILL (kill -9 by a user or another process{unseen})"
    if sig is None:
        return f"the kernel was ended by signal {-exit_code}"
    return "the kernel " + _SIGNAL_WORDS.get(sig, f"was ended by {sig.name}")


def peak_note(witness: MemoryWitness) -> str:
    """``its peak memory was 1.2 GiB`` when it is known, else ""."""
    return f"its peak memory was {_size(witness.peak_bytes)}" if witness.peak_bytes else ""


def _oom_sentence(evidence: str, witness: MemoryWitness) -> str:
    used = f"; the kernel used {_size(witness.peak_bytes)}" if witness.peak_bytes else ""
    total = psutil.virtual_memory().total
    room = f"its memory cgroup's limit is {_size(witness.limit_bytes)}" if witness.limit_bytes else f"this machine has {_size(total)}"
    return f"the kernel was killed by the out-of-memory killer (SIGKILL; {evidence}){used}, {room}"


def _signal(number: int) -> signal.Signals | None:
    try:
        return signal.Signals(number)
    except ValueError:
        return None


def _size(n: int | None) -> str:
    value = float(n or 0)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit in ("bytes", "KiB") else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def stream_copy_path(folder: Path) -> Path:
    """A new kernel's stream-copy file in its runtime ``folder`` (owner-only, or the sandbox's bound folder)."""
    return folder / f"streams-{uuid.uuid4().hex[:16]}.bin"
