# Kernel side of the stream copy: every stdout/stderr write is also appended to a file that outlives the kernel.
#
# ipykernel hands printed text to its IOPub thread and ZeroMQ's I/O thread; a
# SIGKILL (or a segfault, or the out-of-memory killer) ends both before the
# bytes leave the process, so what a cell printed just before it died was lost.
# This wrapper around ``OutStream.write`` copies each piece of text into the
# file ``$DSAGENT_STREAM_COPY``, mapped shared into the kernel's memory, *before*
# ipykernel queues it: the page cache keeps it whatever happens to the process,
# and a copy is a memory copy, not a system call (a ``write(2)`` per piece made
# a cell printing 10,000 lines 85% slower). The parent reads it
# when a cell ends ``died`` (``kernel_gateway/kernel_death.py``).
#
# Every ipykernel dsagent starts (forked, cold, sandboxed) runs this file as an
# IPython startup file (``--IPKernelApp.exec_files``), in the user's namespace:
# so it imports nothing at module level and leaves no name behind. It never
# imports dsagent (a sandboxed kernel sees only this one file of it).
#
# The file has a fixed size (``$DSAGENT_STREAM_COPY_CAP``, 8 MiB, sparse). It
# holds UTF-8 text (surrogatepass) with markers: byte 0xFF, which UTF-8 never
# holds, then ``o`` (stdout text follows), ``e`` (stderr text follows), ``0``
# (a NUL character of the current text: NUL is escaped because the first zero
# byte is the end of what was written) or ``p`` (a request starts:
# ``msg_id`` or ``msg_id out err`` up to a newline, then a kind marker).
# ``out err`` say how many characters of stdout and stderr the request had
# written before, so the reader can tell exactly which text arrived over IOPub.
# When the file is full the kernel starts again at the top with ``p`` records:
# the copy is bounded, and its tail (what matters after a death) is always there.
#
# The common write (same stream and request as the last one) is one encode and
# one ``mmap.write``, without a lock: markers are written under a lock, and two
# threads printing to different streams at the same instant can at worst put a
# piece under the other's marker (the text is kept; only its stream may be wrong).
# For that common write the wrapper then does ipykernel's own work itself (append
# to the request's buffer, schedule a flush) rather than calling its ``write``:
# the extra Python calls (``write``, ``parent_header``, ``_is_master_process``,
# ``_schedule_flush``) cost more than the copy did, so a printing cell is no
# slower with the copy than without. It does so only while ipykernel's ``write``
# uses the names it did when this was written (``_IPYKERNEL_WRITE_NAMES``), with
# no echo, on an open stream, in the kernel's own process; else it calls it.
#
# (Comments, not a docstring: run as a startup file, a docstring would set __doc__ in the user's namespace.)


def _dsagent_stream_copy() -> None:
    import os

    path = os.environ.pop("DSAGENT_STREAM_COPY", "")  # the kernel's subprocesses need not see it
    cap = int(os.environ.pop("DSAGENT_STREAM_COPY_CAP", "") or 8 << 20)
    if not path:
        return
    written_by = _written  # (the module's names are deleted once this has run)
    import mmap
    import threading

    from ipykernel.iostream import OutStream

    if getattr(OutStream.write, "dsagent_stream_copy", False):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.ftruncate(fd, cap)  # sparse: pages are taken as text is written
    copy_map = mmap.mmap(fd, cap)  # shared: the page cache keeps what is written, whatever ends the process
    append = copy_map.write  # writes at the map's position and moves it; ValueError when it does not fit
    write_text = OutStream.write
    kinds = {"stdout": b"o", "stderr": b"e"}
    lock = threading.Lock()
    # the stream, its request and its kind of the last piece: while they stay, a piece is just appended
    last_stream = None
    last_parent = None
    last_kind = b""
    parent_now = None  # the last stream's parent-header lookup, without the property's Python frame

    def start_over() -> None:
        """The file is full: empty it and go on, first saying how much each request had written (see the top)."""
        written = written_by(bytes(copy_map[: copy_map.tell()]))
        os.ftruncate(fd, 0)  # zeroes the mapped pages
        os.ftruncate(fd, cap)
        copy_map.seek(0)
        for msg_id, (out, err) in list(written.items())[-16:]:
            append(b"\xffp%s %d %d\n" % (msg_id.encode(), out, err))

    def parent_lookup(stream: OutStream):
        """``stream.parent_header`` as one C call where ipykernel keeps it in a context variable (None: ask the property)."""
        variable = getattr(stream, "_parent_header", None)
        return variable.get if hasattr(variable, "get") and hasattr(variable, "reset") else lambda default: None

    def put(stream: OutStream, string: str) -> None:
        """The slow path: a new stream or request (a marker first), a NUL to escape, a full file or a huge piece."""
        nonlocal last_stream, last_parent, last_kind, parent_now
        kind = kinds.get(stream.name)
        if kind is None:
            return
        parent = stream.parent_header
        data = string.encode("utf-8", "surrogatepass").replace(b"\0", b"\xff0")
        data = data if len(data) + 2048 < cap else data[-(cap // 4) :]  # (the tail of one huge write)
        with lock:
            if copy_map.tell() + len(data) + 1024 > cap:
                start_over()
                last_parent = None
            if parent is not last_parent:
                append(b"\xffp%s\n" % parent.get("msg_id", "").encode())
                last_parent, last_kind = parent, b""
            if kind is not last_kind:
                append(b"\xff" + kind)
            append(data)
            last_stream, last_kind, parent_now = stream, kind, parent_lookup(stream)

    mirrored = write_text.__code__.co_names == _IPYKERNEL_WRITE_NAMES

    def write(self: OutStream, string: str) -> "int | None":
        if self is last_stream and string.__class__ is str:
            parent = parent_now(None)
            if parent is last_parent and "\0" not in string:
                try:
                    append(string.encode())
                except (ValueError, UnicodeEncodeError):  # full, or a lone surrogate: the slow path handles both
                    put_quietly(self, string)
                if mirrored and self.echo is None and self.pub_thread is not None:
                    # ipykernel's own write, for the case it takes here (no echo, open, this process: a forked
                    # child never gets this far, see forget_in_child): one Python call per write instead of four
                    with self._buffer_lock:
                        self._buffers[frozenset(parent.items())].write(string)
                    if not self._flush_pending:
                        self._schedule_flush()
                    return len(string)
                return write_text(self, string)
        if string and string.__class__ is str:
            put_quietly(self, string)
        return write_text(self, string)

    def put_quietly(stream: OutStream, string: str) -> None:
        try:
            put(stream, string)
        except Exception:  # a full disk or a closed file must not break printing
            pass

    def forget_in_child() -> None:  # a forked child (multiprocessing) shares the map but not the lock or the position
        nonlocal last_stream
        kinds.clear()
        last_stream = None

    os.register_at_fork(after_in_child=forget_in_child)
    write.dsagent_stream_copy = True  # type: ignore[attr-defined]
    write.dsagent_mirrors_ipykernel = mirrored  # type: ignore[attr-defined]
    OutStream.write = write  # type: ignore[method-assign]


#: the names ipykernel 7's ``OutStream.write`` uses: while they are these, the fast path above does what it does
_IPYKERNEL_WRITE_NAMES = (
    "parent_header", "isinstance", "str", "type", "TypeError", "echo", "write", "OSError", "sys", "__stderr__",
    "print", "pub_thread", "ValueError", "_is_master_process", "_buffer_lock", "_buffers", "frozenset", "items",
    "_subprocess_flush_pending", "schedule", "_flush", "_schedule_flush", "len",
)


def _written(records: bytes) -> dict:
    """Characters of stdout and stderr each request had written by the end of ``records`` (the reader's rule)."""
    written: dict = {}
    current = None
    stream = 0
    for piece in records.split(b"\xff")[1:]:
        marker, text = piece[:1], piece[1:]
        if marker == b"p":
            line, _, text = text.partition(b"\n")
            fields = line.decode("utf-8", "replace").split(" ")
            current = written.setdefault(fields[0], [0, 0])
            if len(fields) == 3:
                current[:] = [int(fields[1]), int(fields[2])]
        elif marker in (b"o", b"e"):
            stream = marker == b"e"
        elif marker == b"0":
            text = b"\0" + text
        if current is not None and text:
            current[stream] += len(text.decode("utf-8", "surrogatepass"))
    return written


try:
    _dsagent_stream_copy()
except Exception:  # the kernel works without the copy; only a death's last output may then be lost
    pass
del _dsagent_stream_copy, _written, _IPYKERNEL_WRITE_NAMES
