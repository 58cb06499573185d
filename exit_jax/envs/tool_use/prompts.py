"""System prompts and held-out-function messages for the two reply protocols.

"bfcl": BFCL's own default prompt (`ret_fmt=python&tool_call_tag=False&func_doc_fmt=json&
prompt_fmt=plaintext&style=classic`), assembled from the template strings in the installed wheel so that
scores stay comparable with the leaderboard. The model answers `[f(a=1), g(b='x')]`.

"json_tag": the paper's environment (after Zhuang et al. 2025; paper §5.1, Appendix A): JSON-schema
signatures in the system prompt, one JSON call per `<tool>…</tool>` block, `<TASK_FINISHED>` when the
request is done, `<TASK_ERROR>` when it cannot be done. The wording is ours (the paper does not print it).
"""
from __future__ import annotations

import importlib
import json
from typing import Sequence

from exit_jax.envs.tool_use import data

PROTOCOLS = ("bfcl", "json_tag")
MAX_STEPS_PER_TURN = 20  # BFCL's MAXIMUM_STEP_LIMIT
# Strings at which the sampler should stop generating (the paper stops at any of the json_tag tags).
END_MARKERS = {"bfcl": (), "json_tag": ("<TASK_FINISHED>", "<TASK_ERROR>")}
STOP_STRINGS = {"bfcl": (), "json_tag": ("</tool>",) + END_MARKERS["json_tag"]}
# A reply that ends the current user request in each protocol (what an oracle says after its calls).
END_OF_TURN = {"bfcl": "I have completed the request.", "json_tag": "<TASK_FINISHED>"}

_JSON_TAG_SYSTEM = """You are an expert in composing functions. You are given a user request and a set \
of functions (tools) you can call. Make tool calls to fulfil the request.

To call a tool, write the call as JSON inside tool tags, like this:
<tool>{{"name": "func_name", "parameters": {{"param1": "value1", "param2": "value2"}}}}</tool>
You may make several calls in one response, one <tool> block per call. After each response you receive \
the result of every call. Keep calling tools until the current request is fulfilled, then respond with \
<TASK_FINISHED>. If the request cannot be fulfilled with the available functions or is missing \
information you need, respond with <TASK_ERROR>.

Here is a list of functions in JSON format that you can invoke.
{functions}
"""


def _bfcl_templates():
    data.installed_version()  # a clear error if the wheel is missing
    # A module of plain string constants with no imports of its own.
    return importlib.import_module("bfcl_eval.constants.default_prompts")


def _json_lines(docs: Sequence[dict]) -> str:
    """A JSON list with one function per line. Indented JSON made BFCL's opening prompts 3.9-9.2k SmolLM2
    tokens (longer than its 8,192-token context); one line per function makes them 3.3-7.5k."""
    return "[\n" + ",\n".join(json.dumps(d) for d in docs) + "\n]"


def system_prompt(protocol: str, docs: Sequence[dict]) -> str:
    """The system message for `protocol`, listing `docs` (JSON-schema function docs)."""
    _bfcl = _bfcl_templates()
    if protocol == "bfcl":
        style = _bfcl.PROMPT_STYLE_TEMPLATES["classic"]
        tool_call_format = style["tool_call_no_tag"].format(
            output_format=_bfcl.OUTPUT_FORMAT_MAPPING["python"],
            param_types=_bfcl.PARAM_TYPE_MAPPING["python"])
        available = style["available_tools"].format(format="json",
                                                    functions=json.dumps(list(docs), indent=4))
        return _bfcl.PROMPT_TEMPLATE_MAPPING["plaintext"].format(
            persona=style["persona"], task=style["task"], tool_call_format=tool_call_format,
            multiturn_behavior=style["multiturn_behavior"], available_tools=available)
    if protocol == "json_tag":
        return _JSON_TAG_SYSTEM.format(functions=_json_lines(docs))
    raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")


def added_functions_message(protocol: str, docs: Sequence[dict]) -> str:
    """The user message of a miss_func turn that reveals held-out functions."""
    _bfcl = _bfcl_templates()
    if protocol == "bfcl":
        # BFCL formats the list with str(), not JSON; keep it identical for comparable prompts.
        return _bfcl.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING.format(functions=list(docs))
    if protocol == "json_tag":
        return (_json_lines(docs) + "\n"
                + _bfcl.DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC)
    raise ValueError(f"Unknown protocol {protocol!r}; expected one of {PROTOCOLS}.")
