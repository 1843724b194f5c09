"""Paired timing rounds over variants that each run in their own process.

Why processes: a process-wide setting (hetdiff's ``retain_freed_memory``, which the hetdiff
command line applies to itself) must not leak into the peer it is compared with, and a freed
allocation of one model must not serve the next model's activations. Each variant's process
builds its model, warms up, then waits; the parent asks the variants one after another for one
timed unit per round (only one process computes at any time), so the units of one round run
back to back under the same background load, as paired rounds in one process would.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

UnitFactory = Callable[..., Callable[[], float]]


def serve(conn: Connection, retain: bool, factory: UnitFactory, *factory_args: Any) -> None:
    """A variant's process: ``retain`` (hetdiff's allocator policy), build the timed unit with
    ``factory(*factory_args)`` (it warms up), then answer each request with one unit's seconds."""
    if retain:
        from hetdiff.allocator import retain_freed_memory

        retain_freed_memory()
    unit = factory(*factory_args)
    conn.send("ready")
    while conn.recv() is not None:
        conn.send(unit())
    conn.close()


class Workers:
    """One process per variant: ``{name: (retain, factory, factory_args)}``."""

    def __init__(self, specs: dict[str, tuple[bool, UnitFactory, tuple]]):
        context = multiprocessing.get_context("spawn")  # no fork of a threaded torch
        self.conns: dict[str, Connection] = {}
        self.procs = []
        for name, (retain, factory, factory_args) in specs.items():
            parent, child = context.Pipe()
            proc = context.Process(
                target=serve, args=(child, retain, factory, *factory_args), daemon=True
            )
            proc.start()
            self.conns[name], _ = parent, self.procs.append(proc)
            if parent.recv() != "ready":  # build and warm up one at a time
                raise RuntimeError(f"variant {name} did not start")

    def time(self, order: Iterable[str]) -> dict[str, float]:
        """Seconds of one unit of each variant, run one after another in ``order``."""
        seconds = {}
        for name in order:
            self.conns[name].send("run")
            seconds[name] = self.conns[name].recv()
        return seconds

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)
