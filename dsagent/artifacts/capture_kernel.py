"""Code ``Capture.install`` runs inside the kernel (sent as text: a remote kernel has no dsagent to import).

Two things per cell, both without walking the work dir:

* displayed DataFrames go to ``<folder>/NNNN.parquet`` through a display
  formatter that returns nothing (outputs stay byte-identical);
* the files the cell's code opened for writing are reported by a Python audit
  hook (``sys.addaudithook``: ``open`` with a write, append or create mode or
  flags, which covers ``open``, ``io.open``, ``os.open`` and so pandas,
  numpy, matplotlib; ``os.rename``/``os.replace`` targets; ``os.remove``;
  ``sqlite3.connect``). A file no code of this kernel wrote is never named.
  Child processes are not audited: after a cell that started one, the work
  dir's top level (not its subfolders, at most 10,000 entries) is looked at
  for files changed since the cell began.

After each cell (IPython's ``post_run_cell``, before the reply is sent) the
kernel writes ``<folder>/cell.json``: ``{"seq": n, "files": [[path, size, change]],
"frames": [[name, size]], "removed": [...], "overflow": n}`` with paths relative
to the work dir. At most ``max_files`` paths are kept per cell. Installing
again (a new run on the same kernel, e.g. a chat's next turn) only points the
same hooks at the new run's folder: audit hooks cannot be removed.
"""

# ruff: noqa
# This file is executed in the kernel's namespace; what it defines there is deleted again at the end.


class _DsagentCapture:
    IGNORED = {".dsagent", ".ipynb_checkpoints", "__pycache__"}
    SPAWNING = {"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.exec", "os.fork", "os.forkpty"}
    WATCHED = {"open", "os.rename", "os.remove", "sqlite3.connect"} | SPAWNING
    SCAN_LIMIT = 10_000

    def __init__(self, os, folder, max_bytes, max_files):
        import itertools

        self.os = os
        self.root = os.getcwd()
        self.write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
        self.frames = itertools.count()
        self.seq = 0
        self.configure(folder, max_bytes, max_files)
        self.start_cell()

    def configure(self, folder, max_bytes, max_files):
        self.folder, self.max_bytes, self.max_files = folder, max_bytes, max_files

    def start_cell(self, *args):
        import shutil, time

        shutil.rmtree(self.folder, ignore_errors=True)
        self.written, self.removed, self.spawned, self.overflow = {}, set(), False, 0
        self.start, self.seq = time.time(), self.seq + 1

    def make_folder(self):
        """The folder, made again if a run that shares the work dir (a sweep's sibling) tidied away the empty
        ``.dsagent/frames`` and ``.dsagent`` above it between two of makedirs' steps."""
        for attempt in range(10):
            try:
                self.os.makedirs(self.folder, exist_ok=True)
                return
            except FileNotFoundError:
                if attempt == 9:
                    raise

    # -- the audit hook: every audit event of the process comes here, so it is quick and never raises

    def hook(self, event, args):
        if event not in self.WATCHED:
            return
        try:
            if event == "open":
                path, mode, flags = args
                if mode.strip("rbt") if isinstance(mode, str) else (flags or 0) & self.write_flags:
                    self.note(path)
            elif event == "os.rename":
                self.note(args[1])
            elif event == "os.remove":
                self.note(args[0], removed=True)
            elif event == "sqlite3.connect" and args and args[0] != ":memory:":
                self.note(args[0])
            else:
                self.spawned = True
        except Exception:
            pass  # never fail the user's open()

    def note(self, path, removed=False):
        os = self.os
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif hasattr(path, "__fspath__"):
            path = os.fspath(path)
        if not isinstance(path, str):
            return  # a file descriptor: its file was named when it was opened
        path = os.path.abspath(path)  # against the cwd of the moment
        if path.startswith(self.folder + os.sep):
            return  # our own DataFrame files and report
        if removed:
            self.removed.add(path)
        elif path not in self.written:
            if len(self.written) >= self.max_files:
                self.overflow += 1
            else:
                self.written[path] = os.path.exists(path)

    # -- the report after the cell

    def relative(self, path):
        rel = self.os.path.relpath(path, self.root)
        if rel.startswith(self.os.pardir) or self.os.path.isabs(rel) or self.IGNORED.intersection(rel.split(self.os.sep)):
            return None
        return rel.replace(self.os.sep, "/")

    def files(self):
        import stat

        found = {}
        for path, existed in list(self.written.items()):
            rel = self.relative(path)
            try:
                info = self.os.stat(path)
            except OSError:
                continue  # written, then moved or removed
            if rel is not None and stat.S_ISREG(info.st_mode):
                found[rel] = [rel, info.st_size, "modified" if existed else "created"]
        if self.spawned:
            self.children_files(found)
        return sorted(found.values())

    def children_files(self, found):
        """Child processes are not audited: the work dir's top level only, bounded."""
        import itertools

        since = self.start - 0.02  # file timestamps come from a coarser clock than time.time()
        with self.os.scandir(self.root) as entries:
            for entry in itertools.islice(entries, self.SCAN_LIMIT):
                if entry.name not in self.IGNORED and entry.name not in found and entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    if info.st_mtime >= since:
                        found[entry.name] = [entry.name, info.st_size, "written"]

    def frame_files(self):
        try:
            names = sorted(n for n in self.os.listdir(self.folder) if n != "cell.json")
        except OSError:
            return []
        return [[n, self.os.path.getsize(self.os.path.join(self.folder, n))] for n in names]

    def report(self, *args):
        import json

        exists = self.os.path.exists
        removed = sorted(r for r in map(self.relative, self.removed) if r and not exists(self.os.path.join(self.root, r)))
        manifest = {"seq": self.seq, "files": self.files(), "frames": self.frame_files(), "removed": removed, "overflow": self.overflow}
        self.make_folder()
        with open(self.os.path.join(self.folder, "cell.json"), "w") as handle:
            json.dump(manifest, handle)

    # -- displayed DataFrames

    def frame(self, obj):
        """The display formatter's work: the frame as Parquet in the folder; returns nothing (outputs stay as they are)."""
        import sys

        pandas = sys.modules.get("pandas")
        if pandas is None or not isinstance(obj, pandas.DataFrame):
            return None
        number = next(self.frames)
        try:
            self.make_folder()
            size = int(obj.memory_usage(deep=False).sum())
            if size > self.max_bytes:
                return self.skipped(number, "the DataFrame holds %d bytes in memory, above the capture limit of %d" % (size, self.max_bytes))
            frame = obj
            if not all(isinstance(c, str) for c in obj.columns):
                frame = obj.copy(deep=False)
                frame.columns = [str(c) for c in obj.columns]
            frame.to_parquet(self.os.path.join(self.folder, "%04d.parquet" % number))
        except Exception as exc:
            self.skipped(number, "could not write the DataFrame as Parquet: %s: %s" % (type(exc).__name__, exc))
        return None

    def skipped(self, number, text):
        try:
            with open(self.os.path.join(self.folder, "%04d.skipped.txt" % number), "w") as handle:
                handle.write(text)
        except Exception:
            pass


def _dsagent_install_capture(folder, max_bytes, max_files):
    import os, sys
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter

    ip = get_ipython()
    installed = getattr(ip, "_dsagent_capture", None)
    if installed is not None:
        installed.configure(folder, max_bytes, max_files)
        return
    capture = ip._dsagent_capture = _DsagentCapture(os, folder, max_bytes, max_files)

    class FrameCapture(BaseFormatter):
        format_type = "application/vnd.dsagent.frame-capture"

        def __call__(self, obj):
            return capture.frame(obj)

    ip.display_formatter.formatters[FrameCapture.format_type] = FrameCapture(parent=ip.display_formatter)
    ip.events.register("pre_run_cell", capture.start_cell)
    ip.events.register("post_run_cell", capture.report)
    sys.addaudithook(capture.hook)


_dsagent_install_capture(__import__("os").path.abspath(__FOLDER__), __MAX_BYTES__, __MAX_FILES__)
del _dsagent_install_capture, _DsagentCapture
