"""Our own executor for BFCL tool calls: safe parsing, fresh instances per rollout, string results.

BFCL's executor caches instances in module globals (rollouts of one entry would share state) and `eval`s
model text (docs/domains.md §2.4). Here a reply is parsed with `ast` / `json`, every argument must be a
literal (`ast.literal_eval`), and a call is dispatched by its documented name to the instance of the class
that owns it. Results follow BFCL: strings stay, dicts are JSON-dumped, anything else is `str()`-ed, and
an exception becomes "Error during execution: …".
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import decimal
import inspect
import json
import re
import sys
from typing import Any, Mapping, Sequence

from exit_jax.envs.tool_use import data

ERROR_PREFIX = "Error during execution: "
# Arguments that make the math tools run for minutes (int ** int, mpmath/decimal precision). BFCL's
# ground truth never comes near these; a model that asks for them gets an error string instead.
MAX_PRECISION = 1000
MAX_INT_EXPONENT = 10_000
# int ** int costs what its result's size costs: a 4,000-digit base to the 10,000th held the GIL (the
# trainer's) for 78 s. 2^20 bits (~316k digits) take milliseconds.
MAX_RESULT_BITS = 1 << 20
_NAME_LIMIT = 80  # how much of an unknown name we echo back


@dataclasses.dataclass(frozen=True)
class Call:
    """One decoded tool call. `error` is set when it cannot be executed as written (non-literal args)."""
    name: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def render(self) -> str:
        """The call as python text, `name(arg, key=value)`."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


def _literal(node: ast.AST) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _call_from_ast(node: ast.Call) -> Call:
    if not isinstance(node.func, ast.Name):
        shown = ast.unparse(node.func)[:_NAME_LIMIT]
        return Call(name=shown, error=f"function name {shown!r} must be a plain identifier")
    name = node.func.id
    args = []
    for i, arg in enumerate(node.args):
        ok, value = _literal(arg)
        if isinstance(arg, ast.Starred) or not ok:
            return Call(name=name, error=f"positional argument {i} of {name} is not a literal")
        args.append(value)
    kwargs = {}
    for kw in node.keywords:
        if kw.arg is None:
            return Call(name=name, error=f"**kwargs are not allowed in a call to {name}")
        ok, value = _literal(kw.value)
        if not ok:
            return Call(name=name, error=f"argument {kw.arg!r} of {name} is not a literal")
        kwargs[kw.arg] = value
    return Call(name=name, args=tuple(args), kwargs=kwargs)


def parse_python_calls(text: str) -> tuple[list[Call] | None, str]:
    """BFCL's format `[f(a=1), g('x')]` -> (calls, ""), or (None, reason) when it does not decode.

    Like BFCL's decoder: strip backticks/newlines/spaces, add missing outer brackets, then parse. An empty
    list decodes to no call. Unlike BFCL, positional arguments are kept (its ground truth uses them).
    """
    s = text.strip("`\n ")
    if not s.startswith("["):
        s = "[" + s
    if not s.endswith("]"):
        s = s + "]"
    try:
        body = ast.parse(s, mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        return None, f"not a python call list ({type(e).__name__})"
    if isinstance(body, ast.Call):
        elements = [body]
    elif isinstance(body, (ast.List, ast.Tuple)):
        elements = list(body.elts)
    else:
        return None, "not a python call list"
    if not all(isinstance(e, ast.Call) for e in elements):
        return None, "an element of the list is not a function call"
    return [_call_from_ast(e) for e in elements], ""


_TOOL_BLOCK = re.compile(r"<tool>(.*?)(?:</tool>|\Z)", re.S)


def parse_json_tag_calls(text: str) -> tuple[list[Call] | None, str]:
    """The paper's format `<tool>{"name": ..., "parameters": {...}}</tool>` (repeatable) -> calls.

    A reply without any `<tool>` block (plain text, `<TASK_FINISHED>`, `<TASK_ERROR>`) has no call. The
    closing tag may be missing, since generation stops at it (paper §5.1, Appendix A).
    """
    blocks = _TOOL_BLOCK.findall(text)
    if not blocks:
        return [], ""
    calls = []
    for block in blocks:
        try:
            obj = json.loads(block.strip())
        except (ValueError, RecursionError) as e:
            return None, f"a <tool> block is not valid JSON ({type(e).__name__})"
        for item in obj if isinstance(obj, list) else [obj]:
            name = item.get("name") if isinstance(item, dict) else None
            params = item.get("parameters", item.get("arguments", {})) if isinstance(item, dict) else None
            if not isinstance(name, str) or not isinstance(params, dict):
                return None, 'a <tool> block is not {"name": str, "parameters": dict}'
            calls.append(Call(name=name, kwargs=params))
    return calls, ""


def parse_calls(text: str, protocol: str) -> tuple[list[Call] | None, str]:
    if protocol == "bfcl":
        return parse_python_calls(text)
    if protocol == "json_tag":
        return parse_json_tag_calls(text)
    raise ValueError(f"Unknown protocol {protocol!r}; expected 'bfcl' or 'json_tag'.")


def make_instances(initial_config: Mapping, classes: Sequence[str], long_context: bool) -> dict:
    """Fresh, independent tool instances for one rollout (class name -> instance)."""
    instances = {}
    for class_name in classes:
        instance = data.tool_class(class_name)()
        if class_name not in data.STATELESS_CLASSES:
            # The loaders keep references into the config they get, so give them a private copy.
            config = copy.deepcopy(initial_config.get(class_name, {}))
            instance._load_scenario(config, long_context=long_context)
        # Long-context loaders attach module-level filler objects that later calls mutate (e.g.
        # credit-card balances); copying the loaded instance keeps rollouts from sharing them.
        instances[class_name] = copy.deepcopy(instance)
    return instances


def result_to_str(value: Any) -> str:
    """BFCL's result convention: str as is, dict JSON-dumped (str() if that fails), else str()."""
    try:
        if type(value) is str:
            return value
        if type(value) is dict:
            try:
                return json.dumps(value)
            except (TypeError, ValueError, OverflowError, RecursionError):
                return str(value)
        return str(value)
    except Exception as e:  # e.g. str() of a huge int
        return ERROR_PREFIX + f"result could not be converted to text ({type(e).__name__})"


def _guard(name: str, method: Any, call: Call) -> str | None:
    """Why a call is refused before running (runaway math), or None."""
    try:
        arguments = inspect.signature(method).bind(*call.args, **call.kwargs).arguments
    except TypeError:
        return None  # the call itself raises the same TypeError BFCL would report
    precision = arguments.get("precision")
    if isinstance(precision, (int, float)) and precision > MAX_PRECISION:
        return f"precision {precision} exceeds the limit {MAX_PRECISION}"
    base, exponent = arguments.get("base"), arguments.get("exponent")
    if name == "power" and isinstance(base, int) and isinstance(exponent, int):
        if abs(exponent) > MAX_INT_EXPONENT:
            return f"exponent {exponent} exceeds the limit {MAX_INT_EXPONENT}"
        bits = abs(exponent) * abs(base).bit_length()
        if abs(base) > 1 and bits > MAX_RESULT_BITS:
            return f"the result would have about {bits} bits, which exceeds the limit {MAX_RESULT_BITS}"
    return None


def execute_call(call: Call, instances: Mapping[str, Any], owners: Mapping[str, str]) -> str:
    """Runs one call on the instance owning `call.name`; never raises."""
    if call.error is not None:
        return ERROR_PREFIX + call.error
    owner = owners.get(call.name)
    if owner is None or owner not in instances:
        return ERROR_PREFIX + f"function {call.name[:_NAME_LIMIT]!r} is not available"
    method = getattr(instances[owner], call.name, None)
    if not callable(method):
        return ERROR_PREFIX + f"function {call.name[:_NAME_LIMIT]!r} is not available"
    refused = _guard(call.name, method, call)
    if refused is not None:
        return ERROR_PREFIX + refused
    # MathAPI sets process-wide precision (mpmath.mp.dps, decimal context); restore it so that one
    # rollout's call cannot change another's (or sympy's) numbers.
    mp = sys.modules.get("mpmath")
    saved_dps = mp.mp.dps if mp is not None else None
    saved_context = decimal.getcontext().copy()
    try:
        # Convert inside the saved context: str(mpf) depends on the precision the call set.
        return result_to_str(method(*call.args, **call.kwargs))
    except Exception as e:
        return ERROR_PREFIX + (str(e) or type(e).__name__)  # e.g. MemoryError, which has no message
    finally:
        if mp is not None:
            mp.mp.dps = saved_dps
        decimal.setcontext(saved_context)


def execute_calls(calls: Sequence[Call], instances: Mapping[str, Any],
                  owners: Mapping[str, str]) -> list[str]:
    return [execute_call(call, instances, owners) for call in calls]


def parse_ground_truth(call_strings: Sequence[str]) -> list[Call]:
    """Ground-truth call strings (trusted data) -> calls; raises if the wheel's data is malformed."""
    calls = []
    for text in call_strings:
        parsed, reason = parse_python_calls(text)
        if parsed is None or len(parsed) != 1 or parsed[0].error is not None:
            raise ValueError(f"BFCL ground-truth call {text!r} does not parse: "
                             f"{reason or (parsed and parsed[0].error)}")
        calls.extend(parsed)
    return calls
