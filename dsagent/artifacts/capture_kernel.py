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
  dir's top level (not its subfolders, at most 10,000 entries) is
  looked at for files changed since the cell began.

After each cell (IPython's ``post_run_cell``, before the reply is sent) the
kernel writes ``<folder>/cell.json``: ``{"files": [[path, size, change]],
"frames": [[name, size]], "removed": [...], "overflow": n, "seq": n}`` with paths relative
to the work dir. The hook keeps at most ``max_files`` paths per cell.
"""

# ruff: noqa
# This file is executed in the kernel's namespace; everything it defines is deleted again at the end.


def _dsagent_install_capture(folder, max_bytes, max_files):
    import itertools, json, os, shutil, stat, sys, time
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter

    ip = get_ipython()
    mime = "application/vnd.dsagent.frame-capture"
    if mime in ip.display_formatter.formatters:
        return
    root = os.getcwd()
    ignored = {".dsagent", ".ipynb_checkpoints", "__pycache__"}
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    spawning = {"subprocess.Popen", "os.system", "os.posix_spawn", "os.spawn", "os.exec", "os.fork", "os.forkpty"}
    scan_limit = 10_000
    cell = {"written": {}, "removed": set(), "spawned": False, "overflow": 0, "start": 0.0, "seq": 0}
    counter = itertools.count()

    def note(path, removed=False):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif hasattr(path, "__fspath__"):
            path = os.fspath(path)
        if not isinstance(path, str):
            return  # a file descriptor: its file was named when it was opened
        path = os.path.abspath(path)  # against the cwd of the moment
        if removed:
            cell["removed"].add(path)
        elif path not in cell["written"]:
            if len(cell["written"]) >= max_files:
                cell["overflow"] += 1
            else:
                cell["written"][path] = os.path.exists(path)

    watched = {"open", "os.rename", "os.remove", "sqlite3.connect"} | spawning

    def hook(event, args):
        if event not in watched:  # every audit event of the process comes here: be quick
            return
        try:
            noted(event, args)
        except Exception:
            pass  # never fail the user's open()

    def noted(event, args):
        if event == "open":
            path, mode, flags = args
            if (mode.strip("rbt") if isinstance(mode, str) else (flags or 0) & write_flags):
                note(path)
        elif event == "os.rename":
            note(args[1])
        elif event == "os.remove":
            note(args[0], removed=True)
        elif event == "sqlite3.connect" and args and args[0] != ":memory:":
            note(args[0])
        elif event in spawning:
            cell["spawned"] = True

    def relative(path):
        rel = os.path.relpath(path, root)
        if rel.startswith(os.pardir) or os.path.isabs(rel) or ignored.intersection(rel.split(os.sep)):
            return None
        return rel.replace(os.sep, "/")

    def files():
        found = {}
        for path, existed in list(cell["written"].items()):
            rel = relative(path)
            try:
                info = os.stat(path)
            except OSError:
                continue  # written, then moved or removed
            if rel is not None and stat.S_ISREG(info.st_mode):
                found[rel] = [rel, info.st_size, "modified" if existed else "created"]
        if cell["spawned"]:  # child processes: the top level only, bounded
            since = cell["start"] - 0.02  # file timestamps come from a coarser clock than time.time()
            with os.scandir(root) as entries:
                for entry in itertools.islice(entries, scan_limit):
                    if entry.name not in ignored and entry.name not in found and entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        if info.st_mtime >= since:
                            found[entry.name] = [entry.name, info.st_size, "written"]
        return sorted(found.values())

    def frames():
        try:
            names = sorted(n for n in os.listdir(folder) if n != "cell.json")
        except OSError:
            return []
        return [[n, os.path.getsize(os.path.join(folder, n))] for n in names]

    def start_cell(*args):
        shutil.rmtree(folder, ignore_errors=True)
        cell.update(written={}, removed=set(), spawned=False, overflow=0, start=time.time(), seq=cell["seq"] + 1)

    def report(*args):
        removed = sorted(r for r in map(relative, cell["removed"]) if r and not os.path.exists(os.path.join(root, r)))
        manifest = {"seq": cell["seq"], "files": files(), "frames": frames(), "removed": removed, "overflow": cell["overflow"]}
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "cell.json"), "w") as handle:
            json.dump(manifest, handle)

    def note_frame(number, text):
        with open(os.path.join(folder, "%04d.skipped.txt" % number), "w") as handle:
            handle.write(text)

    class FrameCapture(BaseFormatter):
        format_type = mime

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return None
            number = next(counter)
            try:
                os.makedirs(folder, exist_ok=True)
                size = int(obj.memory_usage(deep=False).sum())
                if size > max_bytes:
                    note_frame(number, "the DataFrame holds %d bytes in memory, above the capture limit of %d" % (size, max_bytes))
                    return None
                frame = obj
                if not all(isinstance(c, str) for c in obj.columns):
                    frame = obj.copy(deep=False)
                    frame.columns = [str(c) for c in obj.columns]
                frame.to_parquet(os.path.join(folder, "%04d.parquet" % number))
            except Exception as exc:
                try:
                    note_frame(number, "could not write the DataFrame as Parquet: %s: %s" % (type(exc).__name__, exc))
                except Exception:
                    pass
            return None

    ip.display_formatter.formatters[mime] = FrameCapture(parent=ip.display_formatter)
    ip.events.register("pre_run_cell", start_cell)
    ip.events.register("post_run_cell", report)
    sys.addaudithook(hook)


_dsagent_install_capture(__import__("os").path.abspath(__FOLDER__), __MAX_BYTES__, __MAX_FILES__)
del _dsagent_install_capture
