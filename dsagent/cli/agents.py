"""Agent commands: ``ask`` (the analysis agent on your data)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "StepPrinter", "terminal_approver"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask the analysis agent a question about data files; prints the answer, artifacts and notebook")
    p.add_argument("question", help="what to find out, in plain words")
    p.add_argument("--data", nargs="+", default=[], metavar="FILE", help="data files (csv, parquet, xlsx, json); "
                   "in the kernel their paths are `data`, `data_2`, ...")
    p.add_argument("--backend", help="kernel backend (default: the 'agent_backend' setting, sandbox)")
    p.add_argument("--model", help="model for every role (default: the llm_model settings)")
    p.add_argument("--max-steps", type=int, help="model turns before the run ends failed (default: agent_max_steps)")
    p.add_argument("--team", action="store_true", help="let the team's lead give the task to the analyst or the coder")
    p.add_argument("--approve", action="store_true", help="show each cell before it runs and wait for y (or a reason to refuse)")
    p.add_argument("--json", action="store_true", help="steps to stderr, then one JSON object: run_id, status, answer, artifacts, notebook")
    p.set_defaults(func=cmd_ask, graph="analysis")

    p = sub.add_parser("code", help="ask the coding agent to write and test code in a work dir")
    p.add_argument("question", metavar="TASK", help="what to build, in plain words")
    p.add_argument("--data", nargs="+", default=[], metavar="FILE", help="input files it may use (`data`, `data_2`, ... in the code)")
    p.add_argument("--backend", help="kernel backend (default: the 'agent_backend' setting, sandbox)")
    p.add_argument("--model", help="model for every role (default: the llm_model settings)")
    p.add_argument("--max-steps", type=int, help="model turns before the run ends failed (default: agent_max_steps)")
    p.add_argument("--approve", action="store_true", help="show each cell before it runs and wait for y (or a reason to refuse)")
    p.add_argument("--json", action="store_true", help="steps to stderr, then one JSON object: run_id, status, answer, artifacts, notebook")
    p.set_defaults(func=cmd_ask, graph="coding", team=False)

    p = sub.add_parser("review", help="review a notebook or an agent run: do its outputs support its claims? (nothing is executed)")
    p.add_argument("target", help="a .ipynb file, or a run id")
    p.add_argument("--task", help="what the notebook was meant to answer (default: its '# Task' cell)")
    p.add_argument("--json", action="store_true", help="one JSON object: verdict, findings")
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("eval", help="score the analysis agent on a benchmark (dabench: InfiAgent-DABench's closed-form format)")
    p.add_argument("benchmark", choices=["dabench"])
    p.add_argument("--questions", required=True, metavar="Q.jsonl", help="the questions (id, question, constraints, format, file_name, level)")
    p.add_argument("--labels", required=True, metavar="L.jsonl", help="the answers (id, common_answers: [[name, value], ...])")
    p.add_argument("--tables", required=True, metavar="DIR", help="the folder of the questions' tables")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--concurrency", type=int, default=1, help="questions at a time (default 1)")
    p.add_argument("--backend", help="kernel backend (default: the 'agent_backend' setting, sandbox)")
    p.add_argument("-o", "--output", help="write the report (JSON) here too")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("resume", help="continue an agent run that stopped (crash, kill -9, Ctrl-C, endpoint down)")
    p.add_argument("run", type=int, help="the run id (dsagent runs ls --kind agent)")
    p.add_argument("--backend", help="kernel backend (default: the one the run used)")
    p.add_argument("--approve", action="store_true", help="show each cell before it runs and wait for y (or a reason to refuse)")
    p.add_argument("--json", action="store_true", help="steps to stderr, then one JSON object: run_id, status, answer, artifacts, notebook")
    p.set_defaults(func=cmd_resume)


class StepPrinter:
    """Prints an agent's steps as one short line each (the run's events hold the full story)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __call__(self, kind: str, payload: dict[str, Any]) -> None:
        line = self.describe(kind, payload)
        if line:
            print(line, file=self.stream, flush=True)

    @staticmethod
    def describe(kind: str, p: dict[str, Any]) -> str | None:
        if kind == "profile":
            return f"· profiled {len(p.get('datasets', []))} dataset(s)"
        if kind == "plan":
            return "· plan:\n" + "\n".join(f"    {line}" for line in str(p.get("plan", "")).strip().splitlines()[:8])
        if kind == "tool":
            code = str(p.get("arguments", {}).get("code") or p.get("arguments", {}).get("command") or p.get("arguments", {}).get("path") or "")
            first = code.strip().splitlines()[0][:90] if code.strip() else ""
            mark = "ok" if p.get("ok") else "failed"
            summary = " ".join(str(p.get("summary", "")).split())[:110]
            return f"· {p.get('tool')} [{mark}, {p.get('seconds', 0):.1f} s] {first}\n    {summary}"
        if kind == "review":
            problems = [f for f in p.get("findings", []) if f.get("severity") == "error"]
            grounded = " (the answer is not grounded in the outputs)" if p.get("grounded") is False else ""
            return f"· review: {p.get('verdict')}{grounded}" + "".join(f"\n    - {f.get('reason')}" for f in problems)
        if kind == "delegate":
            return f"· the lead gives the task to the {p.get('to')}: {p.get('reason')}"
        if kind == "resume":
            return f"· resumed: {p.get('replayed_cells')} cell(s) replayed into a fresh kernel, {p.get('reused')} result(s) reused"
        if kind == "approval":
            return f"· {'approved' if p.get('approved') else 'refused'}: {p.get('tool')}" + (f" ({p['reason']})" if p.get("reason") else "")
        if kind == "revise":
            return f"· revising (revision {p.get('revision')})"
        if kind == "llm_prompt_trimmed":
            return (f"· prompt cut to fit the model's context: {p.get('tokens_before')} -> {p.get('tokens_after')} tokens "
                    f"(room {p.get('limit')}; llm_context_tokens)")
        if kind in ("llm_retry", "llm_fallback"):
            return f"· {kind.replace('_', ' ')}: {p.get('reason') or p.get('detail') or ''}".rstrip()
        return None


def cmd_ask(args: argparse.Namespace) -> int:
    from dsagent.graphs.context import Budget
    from dsagent.graphs.runner import execute_agent_run
    from dsagent.settings import Settings

    settings = Settings()
    if args.model:
        settings = settings.replace(llm_model=args.model, llm_model_planner="", llm_model_coder="", llm_model_reviewer="")
    steps = StepPrinter(sys.stderr if args.json else sys.stdout)
    graph = "team" if args.team else args.graph
    return _run_agent(args, lambda: execute_agent_run(args.question, args.data, graph=graph, backend=args.backend, settings=settings,
                                                      budget=Budget.from_settings(settings, max_steps=args.max_steps), on_step=steps,
                                                      approve=terminal_approver if args.approve else None))


def cmd_review(args: argparse.Namespace) -> int:
    import asyncio

    from dsagent.cli import EXIT_CELL_ERROR, EXIT_OK
    from dsagent.graphs.llm import LLMClient
    from dsagent.graphs.review_notebook import load_notebook, review_notebook
    from dsagent.settings import Settings

    settings = Settings()
    nb, what = load_notebook(args.target, settings)

    async def main() -> Any:
        async with LLMClient(settings) as llm:
            return await review_notebook(nb, llm, task=args.task)

    review = asyncio.run(main())
    if args.json:
        print(json.dumps({"target": what, "verdict": review.verdict, "findings": review.findings, "source": review.source}))
    else:
        print(f"{what}: {review.verdict}")
        for f in review.findings:
            where = f"cell {f['cell']}" if f.get("cell") is not None else "claims"
            print(f"  [{f['severity']}] {where}: {f['reason']}" + (f"\n      fix: {f['fix']}" if f.get("fix") else ""))
        if not review.findings:
            print("  no findings")
    return EXIT_OK if review.verdict == "accept" else EXIT_CELL_ERROR


def cmd_eval(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from dsagent.graphs.evaluation import load_questions, run_dabench

    tables = Path(args.tables)
    questions = load_questions(Path(args.questions), Path(args.labels), tables, args.limit)
    total = len(questions)
    done: list[int] = []

    def progress(row: dict[str, Any]) -> None:
        done.append(1)
        mark = "correct" if row["correct"] else "wrong"
        print(f"[{len(done)}/{total}] question {row['id']}: {mark} (run {row['run_id']}, {row['status']})", file=sys.stderr, flush=True)

    report = asyncio.run(run_dabench(questions, tables, backend=args.backend, concurrency=args.concurrency, on_result=progress))
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print(f"accuracy: {report['accuracy_by_question']:.1%} of {report['questions']} questions, "
              f"{report['accuracy_by_sub_answer']:.1%} of sub-answers"
              + "".join(f"; {level} {acc:.1%}" for level, acc in report["by_level"].items()))
        print("runs: " + ", ".join(f"{n} {status}" for status, n in report["statuses"].items())
              + " (only succeeded runs can count as correct)")
        print(f"batch run {report['batch_run_id']} (its children are the agent runs; report artifact dabench-report.json)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from dsagent.graphs.runner import resume_agent_run

    steps = StepPrinter(sys.stderr if args.json else sys.stdout)
    return _run_agent(args, lambda: resume_agent_run(args.run, backend=args.backend, on_step=steps,
                                                     approve=terminal_approver if args.approve else None))


async def terminal_approver(request: dict[str, Any]) -> dict[str, Any]:
    """Shows the code a tool call would run (on stderr) and reads the answer from stdin."""
    import asyncio

    arguments = request.get("arguments", {})
    shown = arguments.get("code") or arguments.get("command") or f"{arguments.get('path')}:\n{arguments.get('content', '')}"
    print(f"\n--- the agent wants to {request.get('tool')}:\n{shown}\n---\nrun it? [y = yes; anything else = no, "
          "and is told to the agent as the reason] ", end="", file=sys.stderr, flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    answer = line.strip()
    if answer.lower() in ("y", "yes"):
        return {"approved": True}
    return {"approved": False, "reason": answer or ("no answer (stdin closed)" if not line else "refused")}


def _run_agent(args: argparse.Namespace, start: Any) -> int:
    """Run the coroutine ``start()`` makes (SIGTERM cancels like Ctrl-C), then print the outcome."""
    import asyncio
    import signal

    from dsagent.cli import EXIT_CANCELLED, EXIT_CELL_ERROR, EXIT_OK

    async def main() -> Any:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await start()

    try:
        outcome = asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("cancelled: the run is marked cancelled and its partial notebook kept; `dsagent resume RUN` continues it",
              file=sys.stderr)
        return EXIT_CANCELLED
    run = outcome.run
    artifacts = [{"id": a.id, "name": a.name, "kind": a.kind} for a in outcome.artifacts]
    if args.json:
        print(json.dumps({"run_id": run.id, "status": run.status, "answer": outcome.answer, "artifacts": artifacts,
                          "notebook": str(outcome.notebook_path) if outcome.notebook_path else None, "error": run.error}))
    else:
        print()
        print(outcome.answer.strip() or "(no answer)")
        print()
        shown = [a for a in artifacts if a["kind"] != "text"]
        if shown:
            print("artifacts: " + ", ".join(f"#{a['id']} {a['name']}" for a in shown))
        print(f"notebook: {outcome.notebook_path}")
        print(f"run {run.id}: {run.status}" + (f": {run.error}" if run.error else ""))
    # the error and its hint go to stderr with --json too: stdout stays one JSON object, a person still reads why
    if run.status == "unverified":
        print(f"error: the answer is unverified: {run.error}\n  hint: the outputs do not support it; read the run's "
              f"notebook ({outcome.notebook_path}), or ask again more precisely (a larger model helps)", file=sys.stderr)
        return EXIT_CELL_ERROR
    if run.status != "succeeded":
        print(f"error: the agent run failed: {run.error}\n  hint: `dsagent resume {run.id}` continues it after you fix the cause",
              file=sys.stderr)
        return EXIT_CELL_ERROR
    return EXIT_OK
