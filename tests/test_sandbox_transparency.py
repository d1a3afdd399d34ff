"""The proxy is transparent: what a test observes of a candidate through the sandbox (types, values, lazy and
infinite generators, iterators, exceptions and their classes) equals what it observes with the candidate
imported in-process. Each corpus program is run both ways; the in-process observations become the assertion
of the sandboxed run. The HumanEvalFix references must pass both ways as well."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from agentq.sandbox import Limits, LocalExecutor
from agentq.tasks.humanevalfix import load_humanevalfix

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

OBSERVER = '''
import collections.abc, inspect, itertools
from solution import *

BUILTIN_BASES = (ValueError, KeyError, LookupError, TypeError, ZeroDivisionError, ArithmeticError, RuntimeError)


def observe(thunk):
    """What a test can see of a value or an exception: its kind, its items (at most 20) or its data."""
    try:
        value = thunk()
    except Exception as err:
        return ("raised", type(err).__name__, str(err), [b.__name__ for b in BUILTIN_BASES if isinstance(err, b)])
    if inspect.isgenerator(value) or isinstance(value, collections.abc.Iterator):
        kind = "generator" if inspect.isgenerator(value) else "iterator"
        items = []
        try:
            for item in itertools.islice(value, 20):
                items.append(repr(item))
        except Exception as err:
            items.append(("raised mid-iteration", type(err).__name__, str(err)))
        return (kind, items)
    return (type(value).__name__, repr(value))
'''

CORPUS: dict[str, tuple[str, str]] = {
    "generator": (
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        yield a\n        a, b = b, a + b\n",
        "[observe(lambda: fib(10)), observe(lambda: list(fib(5))), observe(lambda: sum(fib(12)))]",
    ),
    "infinite generator, taken lazily": (
        "def naturals():\n    n = 0\n    while True:\n        yield n\n        n += 1\n",
        "[observe(naturals), observe(lambda: next(naturals()))]",
    ),
    "generator expression and yield from": (
        "def evens(xs):\n    return (x for x in xs if x % 2 == 0)\n\n"
        "def chain(a, b):\n    yield from a\n    yield from b\n",
        "[observe(lambda: evens(range(9))), observe(lambda: chain([1, 2], (3,)))]",
    ),
    "builtin iterators": (
        "def squares(xs):\n    return map(lambda x: x * x, xs)\n\ndef pairs(a, b):\n    return zip(a, b)\n\n"
        "def backwards(xs):\n    return reversed(xs)\n\ndef numbered(xs):\n    return enumerate(xs, 1)\n\n"
        "def odd(xs):\n    return filter(lambda x: x % 2, xs)\n",
        "[observe(lambda: squares([1, 2, 3])), observe(lambda: pairs('ab', [1, 2])), "
        "observe(lambda: backwards([1, 2])), observe(lambda: numbered('xy')), observe(lambda: odd(range(6)))]",
    ),
    "an iterator class of its own": (
        "class Countdown:\n    def __init__(self, n):\n        self.n = n\n"
        "    def __iter__(self):\n        return self\n    def __next__(self):\n        if self.n <= 0:\n"
        "            raise StopIteration\n        self.n -= 1\n"
        "        return self.n + 1\n\ndef countdown(n):\n    return Countdown(n)\n",
        "[observe(lambda: countdown(3))]",
    ),
    "exceptions, builtin and its own": (
        "class InvalidInput(ValueError):\n    pass\n\n"
        "def parse(text):\n    if not text.isdigit():\n        raise InvalidInput(f'not a number: {text!r}')\n"
        "    return int(text)\n\ndef lookup(d, k):\n    return d[k]\n\ndef divide(a, b):\n    return a / b\n",
        "[observe(lambda: parse('12')), observe(lambda: parse('x')), observe(lambda: lookup({}, 'k')), "
        "observe(lambda: divide(1, 0)), observe(lambda: parse(None))] + [_caught()]",
    ),
    "a generator that fails midway": (
        "def flaky():\n    yield 1\n    yield 2\n    raise RuntimeError('boom')\n",
        "[observe(flaky)]",
    ),
    "plain data of every shape": (
        "import collections\n\ndef shapes():\n    return [(1, 'a'), {1, 2}, frozenset({3}), {(1, 2): [None, True]},"
        " b'\\\\x00', 3 + 4j, collections.deque([1, 2]), 2 ** 80, -0.5, range(1, 7, 2)]\n",
        "[observe(shapes)]",
    ),
}
CAUGHT = '''

def _caught():
    """`except InvalidInput` with the class imported from solution catches what the candidate raised."""
    try:
        parse("y")
    except InvalidInput as err:
        return ("caught", type(err).__name__, isinstance(err, ValueError))
    return ("not caught",)
'''


def _in_process(program: str, tests: str) -> object:
    """Import the program as `solution` here and evaluate the observations directly."""
    module = types.ModuleType("solution")
    exec(compile(program, "solution.py", "exec"), module.__dict__)
    saved = sys.modules.get("solution")
    sys.modules["solution"] = module
    try:
        namespace: dict = {"__name__": "tests"}
        exec(compile(tests, "tests.py", "exec"), namespace)
        return namespace["observations"]()
    finally:
        if saved is None:
            sys.modules.pop("solution", None)
        else:
            sys.modules["solution"] = saved


@pytest.fixture(scope="module")
def executor():
    with LocalExecutor(workers=2, limits=Limits(timeout_s=10)) as ex:
        yield ex


@pytest.mark.parametrize("name", list(CORPUS))
def test_sandboxed_observations_equal_in_process_ones(executor, name):
    program, expressions = CORPUS[name]
    tests = OBSERVER + (CAUGHT if "_caught" in expressions else "") + \
        f"\n\ndef observations():\n    return {expressions}\n"
    expected = _in_process(program, tests)
    sandboxed = tests + f"\n\ndef test_same_as_in_process():\n    assert observations() == {expected!r}\n"
    verdict = executor.run(program, sandboxed)
    assert verdict.passed, f"{name}: in-process {expected!r}\n{verdict.message}"


def test_generators_stay_generators_for_a_test_that_checks():
    """The held-out failure of issue 11: a correct solution returning a generator failed such a test."""
    program = "def gen(n):\n    for i in range(n):\n        yield i * i\n"
    tests = textwrap.dedent("""
        import inspect, types
        from solution import *

        def test_is_a_generator():
            g = gen(4)
            assert isinstance(g, types.GeneratorType) and inspect.isgenerator(g)
            assert next(g) == 0 and list(g) == [1, 4, 9]
    """)
    with LocalExecutor(workers=1) as ex:
        assert ex.run(program, tests).passed


def test_humanevalfix_references_pass_in_process_and_sandboxed(executor):
    tasks = load_humanevalfix(DATA)
    in_process = []
    for task in tasks:
        try:
            namespace = {"__name__": "tests"}
            module = types.ModuleType("solution")
            exec(compile(task.reference_code, "solution.py", "exec"), module.__dict__)
            sys.modules["solution"] = module
            exec(compile(task.tests, "tests.py", "exec"), namespace)
            for name in [n for n in namespace if n.startswith("test_")]:
                namespace[name]()
            in_process.append(True)
        except Exception:  # noqa: BLE001 - a failing reference is what this compares
            in_process.append(False)
        finally:
            sys.modules.pop("solution", None)
    sandboxed = [v.passed for v in executor.run_many([(t.reference_code, t.tests) for t in tasks])]
    assert sandboxed == in_process and all(in_process)
