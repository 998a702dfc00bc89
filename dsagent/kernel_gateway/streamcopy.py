# Kernel side of the stream copy: every stdout/stderr write is also appended to a file that outlives the kernel.
#
# ipykernel hands printed text to its IOPub thread and ZeroMQ's I/O thread; a
# SIGKILL (or a segfault, or the out-of-memory killer) ends both before the
# bytes leave the process, so what a cell printed just before it died was lost.
# This wrapper around ``OutStream.write`` writes each piece of text to the file
# ``$DSAGENT_STREAM_COPY`` with one ``write(2)`` *before* ipykernel queues it:
# the page cache keeps it whatever happens to the process. The parent reads it
# when a cell ends ``died`` (``kernel_gateway/kernel_death.py``).
#
# Every ipykernel dsagent starts (forked, cold, sandboxed) runs this file as an
# IPython startup file (``--IPKernelApp.exec_files``), in the user's namespace:
# so it imports nothing at module level and leaves no name behind. It never
# imports dsagent (a sandboxed kernel sees only this one file of it).
#
# The file is a series of records: a kind byte (``o`` stdout, ``e`` stderr,
# ``p`` parent), a 4-byte little-endian length, then UTF-8 (surrogatepass).
# A ``p`` record starts the text of one request (``msg_id``) and says how many
# characters of stdout and stderr it had written before (``msg_id out err``),
# so the reader can tell exactly which text arrived over IOPub. Past
# ``$DSAGENT_STREAM_COPY_CAP`` bytes (8 MiB) the kernel empties the file and goes on
# with a ``p`` record: the copy is bounded, and its tail (what matters after a
# death) is always there.
#
# (Comments, not a docstring: run as a startup file, a docstring would set __doc__ in the user's namespace.)


def _dsagent_stream_copy() -> None:
    import os

    path = os.environ.pop("DSAGENT_STREAM_COPY", "")  # the kernel's subprocesses need not see it
    cap = int(os.environ.pop("DSAGENT_STREAM_COPY_CAP", "") or 8 << 20)
    if not path:
        return
    import struct
    import threading

    from ipykernel.iostream import OutStream

    if getattr(OutStream.write, "dsagent_stream_copy", False):
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    write_text = OutStream.write
    header = struct.Struct("<cI").pack
    kinds = {"stdout": b"o", "stderr": b"e"}
    lock = threading.Lock()
    # per request (msg_id): characters written to stdout and stderr; the last few requests only
    counts: dict[str, list[int]] = {}
    state = {"parent": None, "size": os.fstat(fd).st_size}

    def mark(msg_id: str) -> bytes:
        written = counts.pop(msg_id, None) or [0, 0]
        counts[msg_id] = written  # most recent last
        while len(counts) > 16:
            del counts[next(iter(counts))]
        state["parent"] = msg_id
        line = f"{msg_id} {written[0]} {written[1]}".encode()
        return header(b"p", len(line)) + line

    def copy(name: str, msg_id: str, string: str) -> None:
        data = string.encode("utf-8", "surrogatepass")
        with lock:
            record = header(kinds[name], len(data)) + data
            if state["size"] + len(record) > cap:
                os.ftruncate(fd, 0)
                state["size"], state["parent"] = 0, None
            if msg_id != state["parent"]:
                record = mark(msg_id) + record
            os.write(fd, record)
            state["size"] += len(record)
            counts[msg_id][name == "stderr"] += len(string)

    def write(self: OutStream, string: str) -> "int | None":
        if string and isinstance(string, str) and self.name in kinds:
            try:
                copy(self.name, self.parent_header.get("msg_id", ""), string)
            except Exception:  # a full disk or a closed file must not break printing
                pass
        return write_text(self, string)

    write.dsagent_stream_copy = True  # type: ignore[attr-defined]
    OutStream.write = write  # type: ignore[method-assign]


try:
    _dsagent_stream_copy()
except Exception:  # the kernel works without the copy; only a death's last output may then be lost
    pass
del _dsagent_stream_copy
