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
# The file has a fixed size (``$DSAGENT_STREAM_COPY_CAP``, 8 MiB, sparse). Its
# first 8 bytes (little-endian) say where the records end; the records follow:
# a kind byte (``o`` stdout, ``e`` stderr, ``p`` parent), a 4-byte
# little-endian length, then UTF-8 (surrogatepass).
# A ``p`` record starts the text of one request (``msg_id``) and says how many
# characters of stdout and stderr it had written before (``msg_id out err``),
# so the reader can tell exactly which text arrived over IOPub. When the file
# is full the kernel starts again at the top with a ``p`` record: the copy is
# bounded, and its tail (what matters after a death) is always there.
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
    import struct
    import threading

    from ipykernel.iostream import OutStream

    if getattr(OutStream.write, "dsagent_stream_copy", False):
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.ftruncate(fd, cap)  # sparse: pages are taken as text is written
    copy_map = mmap.mmap(fd, cap)  # shared: the page cache keeps what is written, whatever ends the process
    write_text = OutStream.write
    pack_header = struct.Struct("<cI").pack_into
    kinds = {"stdout": b"o", "stderr": b"e"}
    lock = threading.Lock()
    state = [None, 0]  # the parent header of the last text, where the next record goes

    def put(kind: bytes, data: bytes) -> None:
        end = state[1]
        copy_map[end + 5 : end + 5 + len(data)] = data
        pack_header(copy_map, end, kind, len(data))  # after the text: a record is whole once its kind is there
        state[1] = end + 5 + len(data)

    def start_over() -> None:
        """The file is full: empty it and go on, first saying how much each request had written (see the top)."""
        written = written_by(bytes(copy_map[: state[1]]))
        os.ftruncate(fd, 0)  # zeroes the mapped pages
        os.ftruncate(fd, cap)
        state[1] = 0
        for msg_id, (out, err) in list(written.items())[-16:]:
            put(b"p", f"{msg_id} {out} {err}".encode())

    def switch(parent: dict, room: int) -> None:
        if state[1] + room + 1024 > cap:
            start_over()
        state[0] = parent
        put(b"p", parent.get("msg_id", "").encode())

    def write(self: OutStream, string: str) -> "int | None":
        kind = kinds.get(self.name)
        if kind is not None and string and string.__class__ is str:
            try:
                try:
                    data = string.encode()
                except UnicodeEncodeError:
                    data = string.encode("utf-8", "surrogatepass")
                data = data if len(data) + 2048 < cap else data[-(cap // 4) :]  # (the tail of one huge write)
                parent = self.parent_header
                with lock:
                    if parent is not state[0] or state[1] + len(data) + 1029 > cap:
                        state[0] = None
                        switch(parent, len(data) + 5)
                    end = state[1]
                    stop = end + 5 + len(data)
                    copy_map[end + 5 : stop] = data
                    pack_header(copy_map, end, kind, len(data))
                    state[1] = stop
            except Exception:  # a full disk or a closed file must not break printing
                pass
        return write_text(self, string)

    def forget_in_child() -> None:  # a forked child (multiprocessing) shares the map but not the lock or the end
        kinds.clear()

    os.register_at_fork(after_in_child=forget_in_child)
    write.dsagent_stream_copy = True  # type: ignore[attr-defined]
    OutStream.write = write  # type: ignore[method-assign]


def _written(records: bytes) -> dict:
    """Characters of stdout and stderr each request had written by the end of ``records`` (the reader's rule)."""
    import struct

    header = struct.Struct("<cI")
    written: dict = {}
    current = None
    offset = 0
    while offset + 5 <= len(records):
        kind, size = header.unpack_from(records, offset)
        payload = records[offset + 5 : offset + 5 + size]
        offset += 5 + size
        if kind == b"p":
            fields = payload.decode("utf-8", "replace").split(" ")
            current = written.setdefault(fields[0], [0, 0])
            if len(fields) == 3:
                current[:] = [int(fields[1]), int(fields[2])]
        elif kind in (b"o", b"e") and current is not None:
            current[kind == b"e"] += len(payload.decode("utf-8", "surrogatepass"))
        else:
            break
    return written


try:
    _dsagent_stream_copy()
except Exception:  # the kernel works without the copy; only a death's last output may then be lost
    pass
del _dsagent_stream_copy, _written
