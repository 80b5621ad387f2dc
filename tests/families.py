"""Model-family matrix: tiny offline fixtures for eleven real chat-model families.

No model hub is reachable in tests, so, as in ``helpers.py``, everything is built
locally. For each family this module gives:

1. the family's REAL chat template, as shipped in the model repository's
   ``tokenizer_config.json`` ``chat_template`` (or ``chat_template.jinja``), copied
   verbatim from a vendored copy in a public repository (``Family.source`` says
   which; ``Family.verbatim`` is False where the copy could not be confirmed);
2. its special tokens (``special`` = added tokens with ``special=True``, skipped by
   ``skip_special_tokens``; ``non_special`` = atomic added tokens kept on decode),
   bos / eos / pad, and whether plain ``tokenizer(text)`` prepends bos;
3. its ``generation_config.json`` ``eos_token_id`` list (as token strings) and the
   other fields that file ships (sampling defaults, ``cache_implementation``, ...);
4. a tiny randomly initialised model built from the family's real transformers
   config class, with the family's architectural quirks switched on.

``make_family_tokenizer(name)`` trains a small byte-level BPE (as
``helpers.make_tokenizer`` does) with the family's tokens and template;
``make_family_model(name, tokenizer)`` builds the matching tiny float32 model with a
``GenerationConfig`` mirroring the real file.

Where the tiny fixture deliberately deviates from the real checkpoint (e.g. a
16-token sliding window so that windowing happens on short test sequences), the
``quirks`` entry says so. Template sources were read from:

* openvinotoolkit/openvino.genai ``tests/python_tests/data/tokenizer_configs.py``
  (commit da1db864d2bc1a265e9a036f5b57ef13f0e86c2c): a dump of real
  ``tokenizer_config.json`` fields for many hub models (unpatched: the C++ runtime
  patches templates at load time, the test data keeps the originals);
* huggingface/swift-jinja ``Tests/Templates/ChatTemplates.swift`` (commit
  5c0a87846dfd36ca6621795ad2f09fdaab82b739), which byte-for-byte agrees with the
  openvino copy for Llama-3.1 and Qwen2.5 and is the source for SmolLM3;
* mauer4/Attention-From-Scratch ``weights/allenai/OLMo-2-1124-13B-Instruct/
  tokenizer_config.json`` (commit 7b2eb9540b3955e12c8645aa55cb131d38223f01).

Import it from tests as ``import families`` (``conftest.py`` puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from helpers import (  # the helpers' small byte-level BPE on their corpus
    train_bpe,
    wrap_tokenizer,
)
from tokenizers import Tokenizer
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "FAMILIES",
    "FAMILY_NAMES",
    "Family",
    "make_family_model",
    "make_family_tokenizer",
]

# --------------------------------------------------------------------------- #
# Real chat templates (verbatim; see each Family.source).
# --------------------------------------------------------------------------- #

# meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template (date_string
# defaults to "26 Jul 2024"; no strftime_now, unlike Llama 3.2/3.3). Identical in the
# openvino.genai dump and in swift-jinja's ``llama3_1``.
_LLAMA31_TEMPLATE = (
    '{{- bos_token }}\n'
    '{%- if custom_tools is defined %}\n'
    '    {%- set tools = custom_tools %}\n'
    '{%- endif %}\n'
    '{%- if not tools_in_user_message is defined %}\n'
    '    {%- set tools_in_user_message = true %}\n'
    '{%- endif %}\n'
    '{%- if not date_string is defined %}\n'
    '    {%- set date_string = "26 Jul 2024" %}\n'
    '{%- endif %}\n'
    '{%- if not tools is defined %}\n'
    '    {%- set tools = none %}\n'
    '{%- endif %}\n'
    '\n'
    '{#- This block extracts the system message, so we can slot it into the right place. #}\n'
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    '    {%- set messages = messages[1:] %}\n'
    '{%- else %}\n'
    '    {%- set system_message = "" %}\n'
    '{%- endif %}\n'
    '\n'
    '{#- System message + builtin tools #}\n'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{%- if builtin_tools is defined or tools is not none %}\n'
    '    {{- "Environment: ipython\\n" }}\n'
    '{%- endif %}\n'
    '{%- if builtin_tools is defined %}\n'
    '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}\n'
    '{%- endif %}\n'
    '{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    '{%- if tools is not none and not tools_in_user_message %}\n'
    '    '
    '{{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n'
    '    '
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '    {{- "Do not use variables.\\n\\n" }}\n'
    '    {%- for t in tools %}\n'
    '        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n'
    '    {%- endfor %}\n'
    '{%- endif %}\n'
    '{{- system_message }}\n'
    '{{- "<|eot_id|>" }}\n'
    '\n'
    '{#- Custom tools are passed in a user message with some extra guidance #}\n'
    '{%- if tools_in_user_message and not tools is none %}\n'
    '    {#- Extract the first user message so we can plug it in here #}\n'
    '    {%- if messages | length != 0 %}\n'
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    '        {%- set messages = messages[1:] %}\n'
    '    {%- else %}\n'
    '        '
    '{{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n'
    '{%- endif %}\n'
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    '
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '    {{- "Do not use variables.\\n\\n" }}\n'
    '    {%- for t in tools %}\n'
    '        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n'
    '    {%- endfor %}\n'
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    '{%- endif %}\n'
    '\n'
    '{%- for message in messages %}\n'
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    '        '
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    '        {%- if not message.tool_calls|length == 1 %}\n'
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    '        {%- endif %}\n'
    '        {%- set tool_call = message.tool_calls[0].function %}\n'
    '        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    '            {%- for arg_name, arg_val in tool_call.arguments | items %}\n'
    '                {{- arg_name + \'="\' + arg_val + \'"\' }}\n'
    '                {%- if not loop.last %}\n'
    '                    {{- ", " }}\n'
    '                {%- endif %}\n'
    '                {%- endfor %}\n'
    '            {{- ")" }}\n'
    '        {%- else  %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- \'{"name": "\' + tool_call.name + \'", \' }}\n'
    '            {{- \'"parameters": \' }}\n'
    '            {{- tool_call.arguments | tojson }}\n'
    '            {{- "}" }}\n'
    '        {%- endif %}\n'
    '        {%- if builtin_tools is defined %}\n'
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n'
    '        {%- else %}\n'
    '            {{- "<|eot_id|>" }}\n'
    '        {%- endif %}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    '        {%- if message.content is mapping or message.content is iterable %}\n'
    '            {{- message.content | tojson }}\n'
    '        {%- else %}\n'
    '            {{- message.content }}\n'
    '        {%- endif %}\n'
    '        {{- "<|eot_id|>" }}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    '{%- endif %}\n'
)

# Qwen/Qwen2.5-*-Instruct (one template for all sizes; openvino.genai dumps it for
# Qwen2.5-3B-Instruct, swift-jinja's ``qwen2_5`` is byte-identical).
_QWEN25_TEMPLATE = (
    '{%- if tools %}\n'
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    '    {%- else %}\n'
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    '    {%- endif %}\n'
    '    '
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n'
    '        {{- "\\n" }}\n'
    '        {{- tool | tojson }}\n'
    '    {%- endfor %}\n'
    '    '
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    '{%- else %}\n'
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    '    {%- else %}\n'
    '        '
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}\n'
    '{%- for message in messages %}\n'
    '    '
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    '        {%- if message.content %}\n'
    "            {{- '\\n' + message.content }}\n"
    '        {%- endif %}\n'
    '        {%- for tool_call in message.tool_calls %}\n'
    '            {%- if tool_call.function is defined %}\n'
    '                {%- set tool_call = tool_call.function %}\n'
    '            {%- endif %}\n'
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    '            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n'
    '            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n"
    '        {%- endfor %}\n'
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    '        {%- endif %}\n'
    "        {{- '\\n<tool_response>\\n' }}\n"
    '        {{- message.content }}\n'
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    '        {%- endif %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|im_start|>assistant\\n' }}\n"
    '{%- endif %}\n'
)

# Qwen/Qwen3 hybrid-thinking models (Qwen3-0.6B ... Qwen3-32B, incl. Qwen3-8B, share one
# template; openvino.genai dumps it for Qwen3-1.7B). This is the later revision with the
# ``message.content is string`` guards.
_QWEN3_TEMPLATE = (
    '{%- if tools %}\n'
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    '    {%- endif %}\n'
    '    '
    '{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n'
    '        {{- "\\n" }}\n'
    '        {{- tool | tojson }}\n'
    '    {%- endfor %}\n'
    '    '
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    '{%- else %}\n'
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}\n'
    '{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n'
    '{%- for message in messages[::-1] %}\n'
    '    {%- set index = (messages|length - 1) - loop.index0 %}\n'
    '    '
    '{%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith(\'<tool_response>\') and message.content.endswith(\'</tool_response>\')) %}\n'
    '        {%- set ns.multi_step_tool = false %}\n'
    '        {%- set ns.last_query_index = index %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- for message in messages %}\n'
    '    {%- if message.content is string %}\n'
    '        {%- set content = message.content %}\n'
    '    {%- else %}\n'
    "        {%- set content = '' %}\n"
    '    {%- endif %}\n'
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {%- set reasoning_content = '' %}\n"
    '        {%- if message.reasoning_content is string %}\n'
    '            {%- set reasoning_content = message.reasoning_content %}\n'
    '        {%- else %}\n'
    "            {%- if '</think>' in content %}\n"
    '                '
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    '            {%- endif %}\n'
    '        {%- endif %}\n'
    '        {%- if loop.index0 > ns.last_query_index %}\n'
    '            {%- if loop.last or (not loop.last and reasoning_content) %}\n'
    '                '
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    '            {%- else %}\n'
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    '            {%- endif %}\n'
    '        {%- else %}\n'
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    '        {%- endif %}\n'
    '        {%- if message.tool_calls %}\n'
    '            {%- for tool_call in message.tool_calls %}\n'
    '                {%- if (loop.first and content) or (not loop.first) %}\n'
    "                    {{- '\\n' }}\n"
    '                {%- endif %}\n'
    '                {%- if tool_call.function %}\n'
    '                    {%- set tool_call = tool_call.function %}\n'
    '                {%- endif %}\n'
    '                {{- \'<tool_call>\\n{"name": "\' }}\n'
    '                {{- tool_call.name }}\n'
    '                {{- \'", "arguments": \' }}\n'
    '                {%- if tool_call.arguments is string %}\n'
    '                    {{- tool_call.arguments }}\n'
    '                {%- else %}\n'
    '                    {{- tool_call.arguments | tojson }}\n'
    '                {%- endif %}\n'
    "                {{- '}\\n</tool_call>' }}\n"
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    '        {%- endif %}\n'
    "        {{- '\\n<tool_response>\\n' }}\n"
    '        {{- content }}\n'
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    '        {%- endif %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|im_start|>assistant\\n' }}\n"
    '    {%- if enable_thinking is defined and enable_thinking is false %}\n'
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}'
)

# mistralai/Mistral-7B-Instruct-v0.3 (the tool-calling revision). NB: the system
# message is only rendered when the LAST message is a user turn (``loop.last``).
_MISTRAL_V03_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    '    {%- set loop_messages = messages[1:] %}\n'
    '{%- else %}\n'
    '    {%- set loop_messages = messages %}\n'
    '{%- endif %}\n'
    '{%- if not tools is defined %}\n'
    '    {%- set tools = none %}\n'
    '{%- endif %}\n'
    '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}\n'
    '\n'
    '{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n'
    '{%- set ns = namespace() %}\n'
    '{%- set ns.index = 0 %}\n'
    '{%- for message in loop_messages %}\n'
    '    '
    '{%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n'
    '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
    '            '
    '{{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    '        {%- endif %}\n'
    '        {%- set ns.index = ns.index + 1 %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '\n'
    '{{- bos_token }}\n'
    '{%- for message in loop_messages %}\n'
    '    {%- if message["role"] == "user" %}\n'
    '        {%- if tools is not none and (message == user_messages[-1]) %}\n'
    '            {{- "[AVAILABLE_TOOLS] [" }}\n'
    '            {%- for tool in tools %}\n'
    '                {%- set tool = tool.function %}\n'
    '                {{- \'{"type": "function", "function": {\' }}\n'
    '                {%- for key, val in tool.items() if key != "return" %}\n'
    '                    {%- if val is string %}\n'
    '                        {{- \'"\' + key + \'": "\' + val + \'"\' }}\n'
    '                    {%- else %}\n'
    '                        {{- \'"\' + key + \'": \' + val|tojson }}\n'
    '                    {%- endif %}\n'
    '                    {%- if not loop.last %}\n'
    '                        {{- ", " }}\n'
    '                    {%- endif %}\n'
    '                {%- endfor %}\n'
    '                {{- "}}" }}\n'
    '                {%- if not loop.last %}\n'
    '                    {{- ", " }}\n'
    '                {%- else %}\n'
    '                    {{- "]" }}\n'
    '                {%- endif %}\n'
    '            {%- endfor %}\n'
    '            {{- "[/AVAILABLE_TOOLS]" }}\n'
    '            {%- endif %}\n'
    '        {%- if loop.last and system_message is defined %}\n'
    '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    '        {%- else %}\n'
    '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
    '        {%- endif %}\n'
    '    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n'
    '        {{- "[TOOL_CALLS] [" }}\n'
    '        {%- for tool_call in message.tool_calls %}\n'
    '            {%- set out = tool_call.function|tojson %}\n'
    '            {{- out[:-1] }}\n'
    '            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n'
    '                '
    '{{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    '            {%- endif %}\n'
    '            {{- \', "id": "\' + tool_call.id + \'"}\' }}\n'
    '            {%- if not loop.last %}\n'
    '                {{- ", " }}\n'
    '            {%- else %}\n'
    '                {{- "]" + eos_token }}\n'
    '            {%- endif %}\n'
    '        {%- endfor %}\n'
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- " " + message["content"]|trim + eos_token}}\n'
    '    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}\n'
    '        {%- if message.content is defined and message.content.content is defined %}\n'
    '            {%- set content = message.content.content %}\n'
    '        {%- else %}\n'
    '            {%- set content = message.content %}\n'
    '        {%- endif %}\n'
    '        {{- \'[TOOL_RESULTS] {"content": \' + content|string + ", " }}\n'
    '        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n'
    '            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}\n'
    '        {%- endif %}\n'
    '        {{- \'"call_id": "\' + message.tool_call_id + \'"}[/TOOL_RESULTS]\' }}\n'
    '    {%- else %}\n'
    '        '
    '{{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
)

# google/gemma-2-2b-it: the Gemma-1 template, unchanged (openvino.genai dumps it for
# gemma-2b-it / gemma-7b-it; the same 591-byte text ships as chat_template.jinja in
# gemma-2-9b-it derivatives on the hub and in oxide-lab/Oxide-Lab's ``gemma2.rs``).
_GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
    "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n"
    "' + message['content'] | trim + '<end_of_turn>\n"
    "' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n"
    "'}}{% endif %}"
)

# google/gemma-3-1b-it (text part of the gemma-3-*-it template: the system message is
# merged into the first user turn).
_GEMMA3_TEMPLATE = (
    '{{ bos_token }}\n'
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n"
    '\n'
    "' -%}\n"
    '    {%- else -%}\n'
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n"
    '\n'
    "' -%}\n"
    '    {%- endif -%}\n'
    '    {%- set loop_messages = messages[1:] -%}\n'
    '{%- else -%}\n'
    '    {%- set first_user_prefix = "" -%}\n'
    '    {%- set loop_messages = messages -%}\n'
    '{%- endif -%}\n'
    '{%- for message in loop_messages -%}\n'
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        '
    '{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    '    {%- endif -%}\n'
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    '    {%- else -%}\n'
    "        {%- set role = message['role'] -%}\n"
    '    {%- endif -%}\n'
    "    {{ '<start_of_turn>' + role + '\n"
    '\' + (first_user_prefix if loop.first else "") }}\n'
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    '            {%- endif -%}\n'
    '        {%- endfor -%}\n'
    '    {%- else -%}\n'
    '        {{ raise_exception("Invalid content type") }}\n'
    '    {%- endif -%}\n'
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    '{%- endfor -%}\n'
    '{%- if add_generation_prompt -%}\n'
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    '{%- endif -%}\n'
)

# microsoft/Phi-3-mini-4k-instruct (July 2024 revision, which accepts a system role).
_PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'user' %}{{'<|user|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n"
    "' + message['content'] + '<|end|>\n"
    "'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n"
    "' }}{% else %}{{ eos_token }}{% endif %}"
)

# ibm-granite/granite-3.2-2b-instruct (dense GraniteForCausalLM; the default system
# message embeds strftime_now('%B %d, %Y'), i.e. today's date).
_GRANITE32_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    '    {%- set loop_messages = messages[1:] %}\n'
    '{%- else %}\n'
    '    {%- set system_message = "Knowledge Cutoff Date: April 2024.\n'
    'Today\'s Date: " + strftime_now(\'%B %d, %Y\') + ".\n'
    'You are Granite, developed by IBM." %}\n'
    '    {%- if tools and documents %}\n'
    '        '
    '{%- set system_message = system_message + " You are a helpful AI assistant with access to the following tools. When a tool is required to answer the user\'s query, respond with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request.\n'
    '\n'
    'Write the response to the user\'s input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}\n'
    '    {%- elif tools %}\n'
    '        '
    '{%- set system_message = system_message + " You are a helpful AI assistant with access to the following tools. When a tool is required to answer the user\'s query, respond with <|tool_call|> followed by a JSON list of tools used. If a tool does not exist in the provided list of tools, notify the user that you do not have the ability to fulfill the request." %}\n'
    '    {%- elif documents %}\n'
    '        '
    '{%- set system_message = system_message + " Write the response to the user\'s input by strictly aligning with the facts in the provided documents. If the information needed to answer the question is not available in the documents, inform the user that the question cannot be answered based on the available data." %}\n'
    '    {%- elif thinking %}\n'
    '    {%- set system_message = system_message + " You are a helpful AI assistant.\n'
    'Respond to every user query in a comprehensive and detailed way. You can write down your thoughts and reasoning process before responding. In the thought process, engage in a comprehensive cycle of analysis, summarization, exploration, reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. In the response section, based on various attempts, explorations, and reflections from the thoughts section, systematically present the final solution that you deem correct. The response should summarize the thought process. Write your thoughts after \'Here is my thought process:\' and write your response after \'Here is my response:\' for each user query." %}\n'
    '    {%- else %}\n'
    '        {%- set system_message = system_message + " You are a helpful AI assistant." %}    \n'
    '    {%- endif %}\n'
    "    {%- if 'citations' in controls and documents %}\n"
    "        {%- set system_message = system_message + '\n"
    '\n'
    "In your response, use the symbols <co> and </co> to indicate when a fact comes from a document in the search result, e.g <co>0</co> for a fact from document 0. Afterwards, list all the citations with their corresponding documents in an ordered list.' %}\n"
    '    {%- endif %}\n'
    "    {%- if 'hallucinations' in controls and documents %}\n"
    "        {%- set system_message = system_message + '\n"
    '\n'
    "Finally, after the response is written, include a numbered list of sentences from the response that are potentially hallucinated and not based in the documents.' %}\n"
    '    {%- endif %}\n'
    '    {%- set loop_messages = messages %}\n'
    '{%- endif %}\n'
    "{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\n"
    "' }}\n"
    '{%- if tools %}\n'
    "    {{- '<|start_of_role|>tools<|end_of_role|>' }}\n"
    '    {{- tools | tojson(indent=4) }}\n'
    "    {{- '<|end_of_text|>\n"
    "' }}\n"
    '{%- endif %}\n'
    '{%- if documents %}\n'
    "    {{- '<|start_of_role|>documents<|end_of_role|>' }}\n"
    '    {%- for document in documents %}\n'
    "        {{- 'Document ' + loop.index0 | string + '\n"
    "' }}\n"
    "        {{- document['text'] }}\n"
    '        {%- if not loop.last %}\n'
    "            {{- '\n"
    '\n'
    "'}}\n"
    '        {%- endif%}\n'
    '    {%- endfor %}\n'
    "    {{- '<|end_of_text|>\n"
    "' }}\n"
    '{%- endif %}\n'
    '{%- for message in loop_messages %}\n'
    '    '
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\n"
    "' }}\n"
    '    {%- if loop.last and add_generation_prompt %}\n'
    "        {{- '<|start_of_role|>assistant' }}\n"
    '            {%- if controls %}\n'
    "                {{- ' ' + controls | tojson()}}\n"
    '            {%- endif %}\n'
    "        {{- '<|end_of_role|>' }}\n"
    '    {%- endif %}\n'
    '{%- endfor %}'
)

# allenai/OLMo-2-1124-13B-Instruct (the Tulu-3 template; <|user|>/<|assistant|> are
# plain text, not added tokens, in the real Dolma-2 tokenizer).
_OLMO2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n"
    "' + message['content'] + '\n"
    "' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n"
    "' + message['content'] + '\n"
    "' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n"
    "'  + message['content'] + eos_token + '\n"
    "' }}{% else %}{{ '<|assistant|>\n"
    "'  + message['content'] + eos_token }}{% endif %}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n"
    "' }}{% endif %}{% endfor %}"
)

# HuggingFaceTB/SmolLM3-3B chat_template.jinja as released (July 2025; vendored by
# swift-jinja on 2025-07-09 and tested there against the hub file). A later hub commit
# (486a602, "reassign xml_tools to tools ... vllm") changed ~5 lines of the tools
# branch; that revision could not be found verbatim, so the tools branch here is the
# release one. The non-tools rendering is unaffected.
_SMOLLM3_TEMPLATE = (
    '{# ───── defaults ───── #}\n'
    '{%- if enable_thinking is not defined -%}\n'
    '{%- set enable_thinking = true -%}\n'
    '{%- endif -%}\n'
    '\n'
    '{# ───── reasoning mode ───── #}\n'
    '{%- if enable_thinking -%}\n'
    '{%- set reasoning_mode = "/think" -%}\n'
    '{%- else -%}\n'
    '{%- set reasoning_mode = "/no_think" -%}\n'
    '{%- endif -%}\n'
    '\n'
    '{# ───── header (system message) ───── #}\n'
    '{{- "<|im_start|>system\\n" -}}\n'
    '\n'
    '{%- if messages[0].role == "system" -%}\n'
    '{%- set system_message = messages[0].content -%}\n'
    '{%- if "/no_think" in system_message -%}\n'
    '{%- set reasoning_mode = "/no_think" -%}\n'
    '{%- elif "/think" in system_message -%}\n'
    '{%- set reasoning_mode = "/think" -%}\n'
    '{%- endif -%}\n'
    '{%- set custom_instructions = system_message.replace("/no_think", "").replace("/think", "").rstrip() -%}\n'
    '{%- endif -%}\n'
    '\n'
    '{%- if "/system_override" in system_message -%}\n'
    '{{- custom_instructions.replace("/system_override", "").rstrip() -}}\n'
    '{{- "<|im_end|>\\n" -}}\n'
    '{%- else -%}\n'
    '{{- "## Metadata\\n\\n" -}}\n'
    '{{- "Knowledge Cutoff Date: June 2025\\n" -}}\n'
    '{%- set today = strftime_now("%d %B %Y") -%}\n'
    '{{- "Today Date: " ~ today ~ "\\n" -}}\n'
    '{{- "Reasoning Mode: " + reasoning_mode + "\\n\\n" -}}\n'
    '\n'
    '{{- "## Custom Instructions\\n\\n" -}}\n'
    '{%- if custom_instructions -%}\n'
    '{{- custom_instructions + "\\n\\n" -}}\n'
    '{%- elif reasoning_mode == "/think" -%}\n'
    '{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant involves thoroughly exploring questions through a systematic thinking process before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop well-considered thinking process. Please structure your response into two main sections: Thought and Solution using the specified format: <think> Thought section </think> Solution section. In the Thought section, detail your reasoning process in steps. Each step should include detailed considerations such as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based on various attempts, explorations, and reflections from the Thought section, systematically present the final solution that you deem correct. The Solution section should be logical, accurate, and concise and detail necessary steps needed to reach the conclusion.\\n\\n" -}}\n'
    '{%- else -%}\n'
    '{{- "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\\n\\n" -}}\n'
    '{%- endif -%}\n'
    '\n'
    '{%- if xml_tools or python_tools -%}\n'
    '{{- "### Tools\\n\\n" -}}\n'
    '{%- if xml_tools -%}\n'
    '  '
    '{%- set ns = namespace(xml_tool_string="You may call one or more functions to assist with the user query.\\nYou are provided with function signatures within <tools></tools> XML tags:\\n\\n<tools>\\n") -%}\n'
    '  {%- for tool in xml_tools[:] -%} {# The slicing makes sure that xml_tools is a list #}\n'
    '    {%- set ns.xml_tool_string = ns.xml_tool_string ~ (tool | string) ~ "\\n" -%}\n'
    '  {%- endfor -%}\n'
    '  '
    '{%- set xml_tool_string = ns.xml_tool_string + "</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>" -%}\n'
    '  {{- xml_tool_string -}}\n'
    '{%- endif -%}\n'
    '{%- if python_tools -%}\n'
    '  '
    '{%- set ns = namespace(python_tool_string="When you send a message containing Python code between \'<code>\' and \'</code>\' tags, it will be executed in a stateful Jupyter notebook environment, and you will then be given the output to continued reasoning in an agentic loop.\\n\\nYou can use the following tools in your python code like regular functions:\\n<tools>\\n") -%}\n'
    '  {%- for tool in python_tools[:] -%} {# The slicing makes sure that python_tools is a list #}\n'
    '    {%- set ns.python_tool_string = ns.python_tool_string ~ (tool | string) ~ "\\n" -%}\n'
    '  {%- endfor -%}\n'
    '  '
    '{%- set python_tool_string = ns.python_tool_string + "</tools>\\n\\nThe state persists between code executions: so variables that you define in one step are still available thereafter." -%}\n'
    '  {{- python_tool_string -}}\n'
    '{%- endif -%}\n'
    '{{- "\\n\\n" -}}\n'
    '{{- "<|im_end|>\\n" -}}\n'
    '{%- endif -%}\n'
    '{%- endif -%}\n'
    '{# ───── main loop ───── #}\n'
    '{%- for message in messages -%}\n'
    '{%- set content = message.content if message.content is string else "" -%}\n'
    '{%- if message.role == "user" -%}\n'
    '    {{ "<|im_start|>" + message.role + "\\n"  + content + "<|im_end|>\\n" }}\n'
    '{%- elif message.role == "assistant" -%}\n'
    '    {% generation %}\n'
    '    {%- if reasoning_mode == "/think" -%}\n'
    '        {{ "<|im_start|>assistant\\n" + content.lstrip("\\n") + "<|im_end|>\\n" }}\n'
    '    {%- else -%}\n'
    '        '
    '{{ "<|im_start|>assistant\\n" + "<think>\\n\\n</think>\\n" + content.lstrip("\\n") + "<|im_end|>\\n" }}\n'
    '    {%- endif -%}\n'
    '    {% endgeneration %}\n'
    '{%- elif message.role == "tool" -%}\n'
    '{{ "<|im_start|>" + "user\\n"  + content + "<|im_end|>\\n" }}\n'
    '{%- endif -%}\n'
    '{%- endfor -%}\n'
    '{# ───── generation prompt ───── #}\n'
    '{%- if add_generation_prompt -%}\n'
    '{%- if reasoning_mode == "/think" -%}\n'
    '    {{ "<|im_start|>assistant\\n" }}\n'
    '{%- else -%}\n'
    '    {{ "<|im_start|>assistant\\n" + "<think>\\n\\n</think>\\n"  }}\n'
    '{%- endif -%}\n'
    '{%- endif -%}'
)

# meta-llama/Llama-2-7b-chat-hf (same text for 13b/70b-chat).
_LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    '{% set system_message = false %}{% endif %}{% for message in loop_messages %}'
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    '{% endif %}{% if loop.index0 == 0 and system_message != false %}'
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}"
    "{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


# --------------------------------------------------------------------------- #
# The matrix.
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Family:
    """One model family: its real template, tokens, generation defaults and quirks."""

    name: str
    chat_template: str
    source: str  # where the template text came from (repo/path, commit)
    special: tuple[str, ...]  # special=True added tokens (trained in first: lowest ids)
    non_special: tuple[str, ...]  # plain (special=False) atomic added tokens, e.g. <think>
    bos: str | None
    eos: str  # tokenizer.eos_token (tokenizer_config.json)
    pad: str | None  # tokenizer.pad_token (None where the real tokenizer has none)
    add_bos_token: bool  # whether tokenizer(text) prepends bos
    end_of_turn: str  # the token that ends an assistant turn in the template
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id, as strings
    generation_defaults: dict[str, Any]  # its other fields (sampling defaults etc.)
    system_role: bool  # whether the template accepts a system message
    template_kwargs: dict[str, Any]  # kwargs for a deterministic, default-mode rendering
    quirks: tuple[str, ...]  # human-readable list of what is switched on / surprising
    hf_repo: str = ""  # the real model the fixture mirrors
    verbatim: bool = True  # the text of a real revision, copied (False: a reconstruction)
    template_variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # named kwargs sets
    unk: str | None = None
    generation_bos: str | None = None  # generation_config.json bos_token_id, as a string
    generation_pad: str | None = None  # generation_config.json pad_token_id, as a string
    rstrip: tuple[str, ...] = ()  # added tokens with rstrip=True (eat following whitespace)
    padding_side: str = "right"
    vocab_rows: int = 0  # extra embedding rows beyond len(tokenizer) (padded vocabulary)
    vocab_multiple: int = 0  # or: round the embedding rows up to this multiple


_LLAMA3_RESERVED = ("<|reserved_special_token_0|>", "<|reserved_special_token_1|>")

FAMILIES: dict[str, Family] = {
    "llama3": Family(
        name="llama3",
        chat_template=_LLAMA31_TEMPLATE,
        source=(
            "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json chat_template, via "
            "openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864 "
            "(== huggingface/swift-jinja Tests/Templates/ChatTemplates.swift llama3_1 @5c0a8784)"
        ),
        hf_repo="meta-llama/Llama-3.1-8B-Instruct",
        special=(
            "<|begin_of_text|>", "<|end_of_text|>", *_LLAMA3_RESERVED, "<|finetune_right_pad_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
        ),
        non_special=(),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,  # Llama 3.1 Instruct ships no pad token
        add_bos_token=True,  # tokenizer.json post-processor: "<|begin_of_text|> $A"
        end_of_turn="<|eot_id|>",
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        generation_bos="<|begin_of_text|>",
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.9},
        system_role=True,
        template_kwargs={"date_string": "26 Jul 2024"},
        template_variants={"default": {}, "dated": {"date_string": "01 Jan 2025"}},
        quirks=(
            ("system header always rendered ('Cutting Knowledge Date: December 2023 / Today Date: ...'), "
            "even without a system message"),
            "message content is |trim'ed (leading/trailing whitespace of the assistant text is dropped)",
            ("template writes bos_token itself; tokenizer(text) also prepends bos (double BOS if a rendered "
            "string is re-tokenized with add_special_tokens=True)"),
            "three generation eos ids (<|end_of_text|>, <|eom_id|>, <|eot_id|>) but tokenizer.eos_token is <|eot_id|>",
            "no pad token",
            "rope_type 'llama3' frequency scaling (original_max_position_embeddings scaled down to 64)",
            "tied embeddings (as Llama-3.2-1B/3B; the real 3.1-8B is untied)",
            "grouped KV (4 query heads, 2 KV heads)",
        ),
    ),
    "qwen2.5": Family(
        name="qwen2.5",
        chat_template=_QWEN25_TEMPLATE,
        source=(
            "Qwen/Qwen2.5-3B-Instruct tokenizer_config.json chat_template (shared by all Qwen2.5-*-Instruct, "
            "incl. 7B), via openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864 "
            "(== huggingface/swift-jinja ChatTemplates.swift qwen2_5 @5c0a8784)"
        ),
        hf_repo="Qwen/Qwen2.5-7B-Instruct",
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"),
        non_special=("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        add_bos_token=False,
        end_of_turn="<|im_end|>",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        generation_bos="<|endoftext|>",  # generation_config.json bos_token_id 151643 although the tokenizer has no bos
        generation_pad="<|endoftext|>",
        generation_defaults={
            "do_sample": True, "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
        },
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            ("default system message 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' "
            "when none is given"),
            ("padded vocabulary: embedding/lm_head rows = len(tokenizer) + 64 (real: 152064 rows for 7B, "
            "151936 for <=3B, vs 151665 tokens); ids >= len(tokenizer) are never produced by the tokenizer"),
            "q/k/v projection bias (Qwen2Attention has bias=True)",
            "tied embeddings (as Qwen2.5-0.5B/1.5B/3B; 7B is untied)",
            "grouped KV (4 query heads, 2 KV heads)",
            "generation_config repetition_penalty 1.05 etc.; generation bos id set though tokenizer bos is None",
            "tool tokens and FIM tokens are special=False added tokens",
        ),
        vocab_rows=64,
    ),
    "qwen3": Family(
        name="qwen3",
        chat_template=_QWEN3_TEMPLATE,
        source=(
            "Qwen/Qwen3-1.7B tokenizer_config.json chat_template (the Qwen3 hybrid-thinking template shared with "
            "Qwen3-8B), via openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="Qwen/Qwen3-8B",
        special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"),
        non_special=("<tool_call>", "</tool_call>", "<think>", "</think>", "<tool_response>", "</tool_response>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        add_bos_token=False,
        end_of_turn="<|im_end|>",
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        generation_bos="<|endoftext|>",
        generation_pad="<|endoftext|>",
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95},
        system_role=True,
        template_kwargs={"enable_thinking": False},
        template_variants={"default": {}, "no_think": {"enable_thinking": False}, "think": {"enable_thinking": True}},
        quirks=(
            "<think>/</think> are special=False added tokens (kept by skip_special_tokens=True)",
            ("the final assistant turn after the last user query is rendered with a think block "
            "('<think>\\n\\n</think>\\n\\n' when empty), earlier assistant turns without one"),
            ("add_generation_prompt with enable_thinking=False appends '<think>\\n\\n</think>\\n\\n' to the "
            "prompt; with the default (thinking on) the prompt ends at '<|im_start|>assistant\\n' and the "
            "rendered completion starts with the (empty) think block instead"),
            "reasoning is split out of assistant content at '</think>'",
            "q/k RMSNorm (Qwen3Attention), no attention bias",
            "padded vocabulary: embedding rows = len(tokenizer) + 64 (real 151936 rows vs 151669 tokens)",
            "grouped KV (4 query heads, 2 KV heads, head_dim 8 != hidden/heads)",
            "untied embeddings (Qwen3-8B)",
        ),
        vocab_rows=64,
    ),
    "mistral": Family(
        name="mistral",
        chat_template=_MISTRAL_V03_TEMPLATE,
        source=(
            "mistralai/Mistral-7B-Instruct-v0.3 tokenizer_config.json chat_template, via "
            "openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="mistralai/Mistral-7B-Instruct-v0.3",
        special=(
            "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
        ),
        non_special=(),
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        add_bos_token=True,
        end_of_turn="</s>",
        generation_eos=("</s>",),
        generation_bos="<s>",
        generation_defaults={},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            ("system message is prepended to the LAST message only if that message is a user turn: "
            "[system, user, assistant] renders WITHOUT the system prompt"),
            "'[INST] ' + content + '[/INST]' (no space before [/INST]); assistant ' ' + content|trim + '</s>'",
            "[INST]/[/INST] and tool markers are control (special) tokens in v0.3",
            "strict user/assistant alternation (raises otherwise); add_generation_prompt is ignored",
            "no pad token",
            ("sliding_window=16 so that windowing happens on short test sequences (NB: the real "
            "Mistral-7B-Instruct-v0.3 config has sliding_window=null; v0.1 had 4096)"),
            "grouped KV (4 query heads, 2 KV heads)",
        ),
    ),
    "gemma2": Family(
        name="gemma2",
        chat_template=_GEMMA2_TEMPLATE,
        source=(
            "google/gemma-2-2b-it chat template = the Gemma-1 template (openvinotoolkit/openvino.genai "
            "tests/python_tests/data/tokenizer_configs.py @da1db864, key google/gemma-2b-it; identical 591-byte "
            "chat_template.jinja in gemma-2-9b-it derivatives on the hub and oxide-lab/Oxide-Lab gemma2.rs)"
        ),
        hf_repo="google/gemma-2-2b-it",
        special=("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"),
        non_special=(),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos_token=True,
        end_of_turn="<end_of_turn>",
        generation_eos=("<eos>", "<end_of_turn>"),
        generation_bos="<bos>",
        generation_pad="<pad>",
        generation_defaults={"cache_implementation": "hybrid"},
        system_role=False,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            "a system message raises TemplateError('System role not supported')",
            "assistant role is rendered as 'model'; content |trim'ed",
            "turn ends with <end_of_turn> but tokenizer.eos_token is <eos>",
            ("final_logit_softcapping=30 and attn_logit_softcapping=50 (eager attention: Gemma2 has no sdpa "
            "support because of the softcapping)"),
            "alternating sliding_attention/full_attention layers (4 layers), sliding_window=16 (real 4096)",
            "query_pre_attn_scalar=16 != head_dim 8 (attention scale 1/sqrt(16))",
            "embeddings scaled by sqrt(hidden_size); (1 + weight) RMSNorm; pre+post norms",
            "tied embeddings; grouped KV (4 query heads, 2 KV heads)",
            "generation_config cache_implementation 'hybrid' (a deprecated static-cache name in transformers 5)",
        ),
    ),
    "gemma3": Family(
        name="gemma3",
        chat_template=_GEMMA3_TEMPLATE,
        source=(
            "google/gemma-3-1b-it tokenizer_config.json chat_template, via openvinotoolkit/openvino.genai "
            "tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="google/gemma-3-1b-it",
        special=(
            "<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
            "<start_of_image>", "<end_of_image>", "<image_soft_token>",
        ),
        non_special=(),
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        add_bos_token=True,
        end_of_turn="<end_of_turn>",
        generation_eos=("<eos>", "<end_of_turn>"),
        generation_bos="<bos>",
        generation_pad="<pad>",
        generation_defaults={"cache_implementation": "hybrid", "do_sample": True, "top_k": 64, "top_p": 0.95},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            "system message is merged into the first user turn (system + '\\n\\n' + user), no system turn",
            "assistant role is rendered as 'model'; content |trim'ed; list-of-parts content supported",
            "layer_types mix: [sliding, sliding, sliding, full] with sliding_window=16 (real 512, 5:1 pattern)",
            "separate RoPE bases for sliding (10k) and full (1M) layers",
            "q/k RMSNorm, embeddings scaled by sqrt(hidden_size), tied embeddings",
            ("padded vocabulary: embedding rows rounded up to a multiple of 64 (real config vocab_size 262208, "
            "a little more than the tokenizer's entries)"),
            "grouped KV (4 query heads, 2 KV heads)",
        ),
        vocab_multiple=64,
    ),
    "phi3": Family(
        name="phi3",
        chat_template=_PHI3_TEMPLATE,
        source=(
            "microsoft/Phi-3-mini-4k-instruct tokenizer_config.json chat_template, via "
            "openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="microsoft/Phi-3-mini-4k-instruct",
        special=("<unk>", "<s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        non_special=("</s>",),  # </s> is special=False (rstrip=True) in the Phi-3 tokenizer
        rstrip=("<|assistant|>", "<|system|>", "<|end|>", "<|user|>", "</s>"),
        bos="<s>",
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk="<unk>",
        add_bos_token=False,
        padding_side="left",
        end_of_turn="<|end|>",
        generation_eos=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        generation_bos="<s>",
        generation_pad="<|endoftext|>",
        generation_defaults={},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            ("role/turn tokens have rstrip=True: the '\\n' after <|end|>, <|user|>, <|assistant|> is swallowed "
            "by the added token, so tokenize(render) drops those newlines"),
            "add_generation_prompt=False appends eos_token (<|endoftext|>) after the last turn",
            "generation eos list includes <|assistant|>",
            "pad == eos (<|endoftext|>); padding_side 'left'",
            "fused qkv_proj and gate_up_proj (Phi3Config)",
            "sliding_window=31 (the real config has 2047 = 2**11 - 1, an off-by-one window); multi-head (no GQA)",
            "padded vocabulary: rows rounded up to a multiple of 64 (real 32064 rows vs 32011 tokens)",
        ),
        vocab_multiple=64,
    ),
    "granite3": Family(
        name="granite3",
        chat_template=_GRANITE32_TEMPLATE,
        source=(
            "ibm-granite/granite-3.2-2b-instruct tokenizer_config.json chat_template, via "
            "openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="ibm-granite/granite-3.2-2b-instruct",
        special=("<|end_of_text|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                 "<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
        non_special=(),
        bos="<|end_of_text|>",
        eos="<|end_of_text|>",
        pad="<|end_of_text|>",
        unk="<|end_of_text|>",
        add_bos_token=False,
        end_of_turn="<|end_of_text|>",
        generation_eos=("<|end_of_text|>",),
        generation_bos="<|end_of_text|>",
        generation_pad="<|end_of_text|>",
        generation_defaults={},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}, "thinking": {"thinking": True}},
        quirks=(
            ("default system message embeds strftime_now('%B %d, %Y') (rendering depends on today's date) "
            "when no system message is given"),
            ("bos == eos == pad == unk == <|end_of_text|>, which also ends every turn (masking pad ids "
            "masks the end-of-turn tokens)"),
            ("logits_scaling=8 (logits divided by 8), embedding_multiplier=12, residual_multiplier=0.22, "
            "attention_multiplier=0.015625 (instead of 1/sqrt(head_dim))"),
            "tied embeddings; grouped KV (4 query heads, 2 KV heads)",
            "'thinking' template kwarg switches the default system prompt",
        ),
    ),
    "olmo2": Family(
        name="olmo2",
        chat_template=_OLMO2_TEMPLATE,
        source=(
            "allenai/OLMo-2-1124-13B-Instruct tokenizer_config.json chat_template (Tulu-3 template), via "
            "mauer4/Attention-From-Scratch weights/allenai/OLMo-2-1124-13B-Instruct/tokenizer_config.json @7b2eb954"
        ),
        hf_repo="allenai/OLMo-2-1124-13B-Instruct",
        special=("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|im_start|>",
                 "<|im_end|>", "<|endofprompt|>", "<|pad|>"),
        non_special=("<|extra_id_0|>", "|||PHONE_NUMBER|||", "|||EMAIL_ADDRESS|||", "|||IP_ADDRESS|||"),
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        pad="<|pad|>",
        unk="<|endoftext|>",
        add_bos_token=False,
        end_of_turn="<|endoftext|>",
        generation_eos=("<|endoftext|>",),
        generation_pad="<|pad|>",
        generation_defaults={},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            "<|user|>, <|assistant|>, <|system|> are plain text (several BPE tokens), not added tokens",
            "bos == eos == <|endoftext|>: the rendered conversation STARTS with the eos token",
            ("assistant turns end with eos_token + '\\n' except the last message, which ends with eos_token only "
            "(rendering of a turn depends on whether it is last)"),
            "generation prompt is added only after the last message ('<|assistant|>\\n')",
            "post-norm blocks with q/k RMSNorm over the full projection (Olmo2)",
            "padded vocabulary: rows rounded up to a multiple of 128 (real 100352 rows vs 100278 tokens)",
            "multi-head attention (no GQA), untied embeddings",
        ),
        vocab_multiple=128,
    ),
    "smollm3": Family(
        name="smollm3",
        chat_template=_SMOLLM3_TEMPLATE,
        source=(
            "HuggingFaceTB/SmolLM3-3B chat_template.jinja (release version, July 2025), via huggingface/swift-jinja "
            "Tests/Templates/ChatTemplates.swift smollm3 @5c0a87846dfd36ca6621795ad2f09fdaab82b739 (added 2025-07-09 "
            "in 1b3578f4); the later hub revision 486a602 (tools branch) was not found verbatim"
        ),
        hf_repo="HuggingFaceTB/SmolLM3-3B",
        special=("<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|im_start|>",
                 "<|im_end|>", "<|eot_id|>"),
        non_special=("<think>", "</think>", "<tool_call>", "</tool_call>"),
        bos=None,
        eos="<|im_end|>",
        pad="<|finetune_right_pad_id|>",
        add_bos_token=False,
        end_of_turn="<|im_end|>",
        generation_eos=("<|im_end|>",),
        generation_pad="<|finetune_right_pad_id|>",
        generation_defaults={},
        system_role=True,
        template_kwargs={"enable_thinking": False},
        template_variants={
            "default": {}, "no_think": {"enable_thinking": False}, "think": {"enable_thinking": True},
        },
        quirks=(
            ("system header always rendered ('## Metadata ... Knowledge Cutoff Date: June 2025 / Today Date: "
            "<strftime_now> / Reasoning Mode: /think|/no_think ## Custom Instructions'), date-dependent"),
            ("'/think' or '/no_think' inside the system message override enable_thinking and are removed from it; "
            "'/system_override' replaces the whole header by the system text"),
            ("the system turn is NOT closed with <|im_end|> unless xml_tools/python_tools are given: the header "
            "runs straight into '<|im_start|>user' (also what the hub file renders, per swift-jinja's tests)"),
            "default custom instructions differ by mode (long reasoning persona in /think)",
            "in /no_think mode every assistant turn and the generation prompt get '<think>\\n\\n</think>\\n'",
            "assistant turns wrapped in {% generation %} (assistant masks supported)",
            "NoPE: no_rope_layers=[1, 1, 1, 0] (every 4th layer without rotary embeddings)",
            "tied embeddings; grouped KV (4 query heads, 2 KV heads)",
            ("<think>/</think> special flags and the generation_config sampling fields could not be verified "
            "(special=False and no sampling defaults assumed)"),
        ),
    ),
    "llama2": Family(
        name="llama2",
        chat_template=_LLAMA2_TEMPLATE,
        source=(
            "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template, via "
            "openvinotoolkit/openvino.genai tests/python_tests/data/tokenizer_configs.py @da1db864"
        ),
        hf_repo="meta-llama/Llama-2-7b-chat-hf",
        special=("<unk>", "<s>", "</s>"),
        non_special=(),
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        add_bos_token=True,
        end_of_turn="</s>",
        generation_eos=("</s>",),
        generation_bos="<s>",
        generation_pad="<unk>",  # generation_config.json pad_token_id 0
        generation_defaults={"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_length": 4096},
        system_role=True,
        template_kwargs={},
        template_variants={"default": {}},
        quirks=(
            ("assistant turn renders ' ' + content.strip() + ' ' + eos_token: the token after the content is a "
            "whitespace token, not the end-of-turn token"),
            "every user turn starts with bos_token + '[INST] '; [INST]/[/INST]/<<SYS>> are plain text",
            "system message folded into the first user turn inside <<SYS>> ... <</SYS>>",
            "add_generation_prompt is ignored (the prompt just ends with ' [/INST]')",
            "strict user/assistant alternation (raises otherwise)",
            "no pad token (generation_config pad_token_id 0 = <unk>)",
            "multi-head attention (no GQA), untied embeddings",
        ),
    ),
}

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


# --------------------------------------------------------------------------- #
# Tokenizers.
# --------------------------------------------------------------------------- #

@functools.cache
def _trained_backend(name: str) -> Tokenizer:
    """Train (once per family) the byte-level BPE backend with the family's tokens."""
    fam = FAMILIES[name]
    return train_bpe(fam.special, fam.bos, fam.add_bos_token, fam.non_special, fam.rstrip)


def make_family_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer with ``name``'s tokens and real chat template.

    The BPE is trained once per family and cached; each call wraps a copy, so callers
    may mutate the result. The template survives ``save_pretrained``/``from_pretrained``
    (transformers 5 writes it to ``chat_template.jinja``).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {FAMILY_NAMES}")
    fam = FAMILIES[name]
    return wrap_tokenizer(_trained_backend(name), fam.chat_template, eos=fam.eos, pad=fam.pad, bos=fam.bos,
                          add_bos_token=fam.add_bos_token, unk_token=fam.unk, padding_side=fam.padding_side)


# --------------------------------------------------------------------------- #
# Models.
# --------------------------------------------------------------------------- #


def _ids(tokenizer: Any, tokens: tuple[str, ...] | list[str]) -> list[int]:
    out = []
    for t in tokens:
        i = tokenizer.convert_tokens_to_ids(t)
        unk = tokenizer.unk_token_id
        if i is None or (unk is not None and i == unk and t != tokenizer.unk_token):
            raise ValueError(f"token {t!r} is not in the tokenizer")
        out.append(int(i))
    return out


def _one(tokenizer: Any, token: str | None) -> int | None:
    return None if token is None else _ids(tokenizer, [token])[0]


def _vocab_rows(fam: Family, n: int) -> int:
    if fam.vocab_multiple:
        return int(math.ceil(n / fam.vocab_multiple) * fam.vocab_multiple)
    return n + fam.vocab_rows


def _config(name: str, tokenizer: Any, overrides: dict[str, Any] | None = None) -> Any:
    """The family's real transformers config class, tiny, with its quirks on (``overrides`` set after)."""
    config = _family_config(name, tokenizer)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    return config


def _family_config(name: str, tokenizer: Any) -> Any:
    import transformers as tf

    fam = FAMILIES[name]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _one(tokenizer, fam.generation_pad)
    ids = {
        "vocab_size": _vocab_rows(fam, len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad_id,
    }
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "max_position_embeddings": 512}
    if name == "llama3":
        return tf.LlamaConfig(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
            },
        )
    if name == "qwen2.5":
        return tf.Qwen2Config(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if name == "qwen3":
        return tf.Qwen3Config(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if name == "mistral":
        return tf.MistralConfig(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=2, sliding_window=16,
            tie_word_embeddings=False, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
    if name == "gemma2":
        return tf.Gemma2Config(
            **ids, **small, num_hidden_layers=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
            sliding_window=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        )
    if name == "gemma3":
        return tf.Gemma3TextConfig(
            **ids, **small, num_hidden_layers=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
            sliding_window=16, tie_word_embeddings=True,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        )
    if name == "phi3":
        return tf.Phi3Config(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=4, sliding_window=31,
            original_max_position_embeddings=512, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    if name == "granite3":
        return tf.GraniteConfig(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
            embedding_multiplier=12.0, logits_scaling=8.0, residual_multiplier=0.22, attention_multiplier=0.015625,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
        )
    if name == "olmo2":
        return tf.Olmo2Config(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=4, tie_word_embeddings=False,
            rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if name == "smollm3":
        return tf.SmolLM3Config(
            **ids, **small, num_hidden_layers=4, num_key_value_heads=2, no_rope_layer_interval=4,
            tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
        )
    if name == "llama2":
        return tf.LlamaConfig(
            **ids, **small, num_hidden_layers=2, num_key_value_heads=4, tie_word_embeddings=False,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
    raise ValueError(f"unknown family {name!r}")


# Gemma2 declares ``_supports_sdpa = False`` (sdpa cannot softcap attention logits).
_ATTN_IMPLEMENTATION: dict[str, str] = {"gemma2": "eager"}


def make_family_model(name: str, tokenizer: Any, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny, randomly initialised float32 causal LM of family ``name``, in eval mode.

    Built from the family's real config class with its quirks on (see
    ``FAMILIES[name].quirks``); embedding rows may exceed ``len(tokenizer)`` where the
    real family pads its vocabulary. ``model.generation_config`` mirrors the real
    ``generation_config.json``: the eos id list, bos/pad and the sampling defaults.
    ``overrides`` are config fields set on top (e.g. a wider sliding window).
    """
    import transformers as tf

    fam = FAMILIES[name]
    config = _config(name, tokenizer, overrides)
    torch.manual_seed(seed)
    # gemma3_text -> Gemma3ForCausalLM, llama -> LlamaForCausalLM, ...
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=_ATTN_IMPLEMENTATION.get(name, "sdpa"))
    model = model.to(torch.float32).eval()
    gen_pad = _one(tokenizer, fam.generation_pad) if fam.generation_pad else tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=_one(tokenizer, fam.generation_bos),
        eos_token_id=_ids(tokenizer, fam.generation_eos),
        pad_token_id=gen_pad,
        **fam.generation_defaults,
    )
    return model
