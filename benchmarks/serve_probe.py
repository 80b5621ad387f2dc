"""An exported bake served by llama-cpp-python's OpenAI-compatible server, asked the built-in held-out
queries without the system prompt: the share of greedy answers in the probe's language.

    python benchmarks/serve_probe.py RUN/export/gguf-lora/adapter.gguf   # the bake, on the embedded base
    python benchmarks/serve_probe.py                                     # the base alone
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from openai import OpenAI

from promptbake.builtin.models import embedded_gguf
from promptbake.builtin.probes import LanguageProbe
from promptbake.stages.queries import builtin_queries

gguf = os.path.join(*embedded_gguf("smollm2-135m"))
lora = sys.argv[1] if len(sys.argv) > 1 else None
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"]
if lora: cmd += ["--lora_path", lora]
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
try:
    for _ in range(240):
        try: urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2); break
        except OSError: time.sleep(0.5)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
    probe = LanguageProbe("fr")
    qs = builtin_queries("heldout")
    hits = 0
    for q in qs:
        r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": q.text}], temperature=0, max_tokens=48)
        hits += probe.score(q.text, r.choices[0].message.content)
    print(json.dumps({"lora": bool(lora), "french": hits / len(qs), "n": len(qs)}))
finally:
    os.killpg(proc.pid, signal.SIGTERM)
