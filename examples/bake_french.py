"""Bake "Always respond in French" into the embedded SmolLM2-135M and compare answers.

    python examples/bake_french.py

About 10 minutes on a 2-core CPU; see docs/results.md.
"""

from pathlib import Path

from promptbake import Baker
from promptbake.compare import compare

prompt = (Path(__file__).parent / "prompts" / "french.txt").read_text().strip()
result = Baker(prompt, teacher="hf", student="peft", loss="topk_kl", out="runs/french-example",
               overwrite=True).run()
print(f"adapter: {result.adapter_path}")
print(f"held-out KL gap closed: {100 * result.eval['gap_closed']:.1f}%")
for name, answer in compare(result.adapter_path, "How do bees make honey?", prompt).items():
    print(f"--- {name}\n{answer}")
