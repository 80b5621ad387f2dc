"""Ollama's Modelfile for a GGUF export: the base (and adapter), and the chat format where Ollama
needs it spelled out.

Ollama renders prompts with its own Go templates, not the model's Jinja one. For ChatML models
(SmolLM2, Qwen) the Modelfile carries the template, the default system message the Jinja template
inserts when a conversation has none (SmolLM2's: the bake learnt to answer under it), and the end
of turn as a stop; each is checked by rendering the model's own template, and left out (with a
note) when the template is not plain ChatML.
"""

from __future__ import annotations

from typing import Any

CHATML_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}{{ if eq .Role \"user\" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n"
    "<|im_start|>assistant\n{{ else if eq .Role \"assistant\" }}{{ .Content }}<|im_end|>\n{{ end }}{{ end }}"
)


def _chatml(messages: list[dict[str, str]]) -> str:
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str | None:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError, KeyError):  # a template refusing these messages is not ChatML
        return None


def chatml_system(tokenizer: Any) -> tuple[bool, str | None]:
    """(whether the chat template is plain ChatML, the system message it inserts when none is given)."""
    if not getattr(tokenizer, "chat_template", None):
        return False, None
    system = {"role": "system", "content": "S"}
    talk = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"}]
    if _render(tokenizer, [system, *talk]) != _chatml([system, *talk]):
        return False, None
    alone = _render(tokenizer, talk)
    if alone == _chatml(talk):
        return True, None
    head = "<|im_start|>system\n"
    if alone is None or not alone.startswith(head):
        return False, None
    default = alone[len(head):].split("<|im_end|>\n", 1)[0]
    if alone != _chatml([{"role": "system", "content": default}, *talk]):
        return False, None
    return True, default


def _quoted(text: str) -> str:
    return '"""' + text + '"""'


def modelfile(base: str, adapter: str | None, tokenizer: Any) -> tuple[str, list[str]]:
    """The Modelfile's text and the notes it needs."""
    lines = [f"FROM {base}"]
    if adapter is not None:
        lines.append(f"ADAPTER {adapter}")
    notes = []
    chatml, system = chatml_system(tokenizer) if tokenizer is not None else (False, None)
    if chatml:
        lines.append(f"TEMPLATE {_quoted(CHATML_TEMPLATE)}")
        if system is not None:
            lines.append(f"SYSTEM {_quoted(system)}")
        stops = ["<|im_end|>"]
    else:
        notes.append("The Modelfile has no TEMPLATE: the chat template is not plain ChatML, so Ollama uses the one "
                     "it derives from the GGUF's tokenizer.chat_template; check `ollama show --template`.")
        stops = []
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    if isinstance(eos, str) and eos and eos not in stops:
        stops.append(eos)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n", notes
