"""What every `bench perf` command shares: the ``--json FILE`` option and its atomic write, a phase
progress bar, and a child-process runner that returns one result without leaking semaphores."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any, Callable


def pop_json_option(items: list[str]) -> tuple[str | None, list[str]]:
    """``--json FILE`` / ``--json=FILE`` / ``json=FILE`` taken out of a command's extra arguments."""
    from bench.method import ConfigError

    rest, path, i = [], None, 0
    while i < len(items):
        a = items[i]
        if a == "--json":
            if i + 1 >= len(items):
                raise ConfigError("--json: expected a file name, e.g. --json perf.json")
            path, i = items[i + 1], i + 2
            continue
        if a.startswith("--json=") or a.startswith("json="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def write_json(path: str | Path | None, result: dict[str, Any]) -> None:
    """Write ``result`` atomically when ``--json`` was given, and say where."""
    if not path:
        return
    from bench.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {path}")


def progress(total: int, desc: str):
    """A tqdm bar over a command's phases (stderr; silent when not a terminal is fine for logs)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="phase", dynamic_ncols=True)


def _child(fn: Callable[[dict[str, Any]], dict[str, Any]], cfg: dict[str, Any], conn) -> None:
    try:
        conn.send(("ok", fn(cfg)))
    except BaseException as err:  # noqa: BLE001 - reported in the parent as one line
        conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


def in_fresh_process(fn: Callable[[dict[str, Any]], dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """``fn(cfg)`` in a spawned process (its own peak memory), result through a pipe (a Queue's
    semaphore is what the old version leaked)."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fn, cfg, send))
    p.start()
    send.close()
    try:
        status, value = recv.recv()
    except EOFError:
        status, value = "error", f"the child process died (exit code {p.exitcode})"
    p.join()
    recv.close()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)}: {value}")
    return value
