"""Recorded steps (CUDA graphs, jittor static graphs) kept from one image for the next.

The pipeline builds its step functions anew for every image; a closure of the same code over equal values
may replay what an earlier one recorded. Framework-free: both backends key their recorded steps here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import types

import numpy as np


class _Uncachable(Exception):
    pass


def step_key(fn, same: tuple = ()):
    """A key under which a graph captured from ``fn`` may serve a later closure of the same code over equal
    values (the pipeline builds its step functions anew for every image), or None.

    The key holds the function's code and, recursively, what it closes over: numbers, strings, tuples,
    dataclasses, numpy arrays, functions of the same kinds; the objects in ``same`` (the backend) and
    classes or modules by identity. Anything else (a tensor, say, which the graph would have baked in)
    makes the function uncachable: it gets a graph of its own.
    """
    try:
        return _function_key(fn, {id(x) for x in same}, 0)
    except (_Uncachable, RecursionError):  # RecursionError: a container that holds itself
        return None


def _function_key(fn, same: set, depth: int):
    if depth > 8:
        raise _Uncachable("closures nested too deep")
    try:
        cells = tuple(_value_key(cell.cell_contents, same, depth + 1) for cell in fn.__closure__ or ())
    except ValueError:  # an empty cell: a closure whose variable is not bound yet
        raise _Uncachable("unbound closure variable") from None
    defaults = _value_key(fn.__defaults__, same, depth + 1)
    kwdefaults = _value_key(fn.__kwdefaults__ or {}, same, depth + 1)
    return ("function", fn.__code__, cells, defaults, kwdefaults)


def _value_key(value, same: set, depth: int):
    if id(value) in same or isinstance(value, (type, types.ModuleType)):
        return ("same", id(value))
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return (type(value), value)
    if isinstance(value, (tuple, list, frozenset)):
        return (type(value), tuple(_value_key(x, same, depth) for x in value))
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        return (dict, tuple((k, _value_key(v, same, depth)) for k, v in items))
    if isinstance(value, np.ndarray):
        digest = hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()
        return (np.ndarray, value.shape, value.dtype.str, digest)
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return (type(value),) + tuple(_value_key(getattr(value, f.name), same, depth) for f in fields)
    if isinstance(value, types.FunctionType):
        return _function_key(value, same, depth)
    raise _Uncachable(type(value).__name__)


class StepCache:
    """Recorded steps by key, the least recently used dropped first beyond ``size`` (a photo with null-text
    and ITO records 7 steps)."""

    def __init__(self, size: int = 32):
        self.size, self.steps = size, {}

    def step(self, fn, key, make):
        """The step kept under ``key``, now for ``fn`` (equal to the one it recorded: it records again if new
        argument shapes come), else ``make(fn)``, kept unless ``key`` is None (an uncachable closure)."""
        step = None if key is None else self.steps.pop(key, None)
        if step is not None:
            step.fn = fn
        else:
            step = make(fn)
        if key is not None:
            self.steps[key] = step
            while len(self.steps) > self.size:
                del self.steps[next(iter(self.steps))]
        return step

    def clear(self) -> None:
        self.steps.clear()

    def __len__(self) -> int:
        return len(self.steps)
