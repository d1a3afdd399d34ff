"""The real-cluster scenarios: one module each, registered with `@scenario`, run by e2e.run in `order`.

Adding one (issue 24's operator faults with real pods, issue 26's SWE-bench-shaped task graded in a Job, ...):

    # tests/e2e/scenarios/my_fault.py
    from e2e.scenarios import Context, scenario

    @scenario("my-fault", order=70)
    def my_fault(ctx: Context) -> dict:
        '''One line on what it shows.'''
        name = ctx.apply_round("e2e-my-fault", ctx.small_round())     # or ctx.apply(manifest)
        ctx.wait_round(name)                                           # raises with diagnostics on failure
        return {"whatever": "the JSON should show"}                    # `ok` and `seconds` are added

Every module in this package is imported by `load()`, so the module is the whole registration. A scenario
fails by raising (an AssertionError or a ctx.wait_* timeout); e2e.run then prints the cluster's diagnostics and
goes on with the next scenario, and the run's JSON and exit status say which failed.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from e2e.context import Context

__all__ = ["REGISTRY", "Context", "Scenario", "load", "scenario"]


@dataclass(frozen=True)
class Scenario:
    name: str
    order: int
    run: Callable[[Context], dict]
    doc: str


REGISTRY: dict[str, Scenario] = {}


def scenario(name: str, order: int) -> Callable[[Callable[[Context], dict]], Callable[[Context], dict]]:
    def register(fn: Callable[[Context], dict]) -> Callable[[Context], dict]:
        if name in REGISTRY and REGISTRY[name].run is not fn:
            raise ValueError(f"e2e scenario {name!r} is registered twice")
        REGISTRY[name] = Scenario(name, order, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return register


def load() -> list[Scenario]:
    """Every scenario module of this package, imported; the scenarios in their order."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return sorted(REGISTRY.values(), key=lambda s: (s.order, s.name))
