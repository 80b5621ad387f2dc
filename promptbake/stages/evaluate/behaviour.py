"""What the models say on held-out queries: answers, output statistics, probes and the on-policy gap.

Sides compared (each answers the same queries with greedy decoding):

- ``base``: the student's model with the adapter off, no prompt (also for every
  log-likelihood and KL of the base: never the teacher's model, which may be another);
- ``prompted``: the teacher with the system prompt (what the bake imitates);
- ``baked``: the student with the adapter, no prompt (optionally at a ``strength``);
- ``reprompted``: the baked student *with* the prompt (the paper's re-prompting).

The on-policy gap is the per-token KL(prompted || model) measured on the
model's own samples rather than the teacher's: a bake can match the teacher on
the teacher's text yet drift once it writes its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ...core.batching import batches
from ...core.errors import ConfigError
from ...core.interfaces import BatchTargets, SamplingConfig, Student, Teacher
from ...core.probes import Probe
from ...core.progress import counter
from ...core.types import Prefix, Query, Sample, Trajectory
from ..render import Renderer
from .heldout import Tally, response_positions

SIDES = ("base", "prompted", "baked")


@dataclass
class Sides:
    """The models to compare: a teacher that samples with the prompt and a student that generates."""

    teacher: Teacher
    student: Student
    renderer: Renderer
    max_new_tokens: int = 48
    show_progress: bool = True
    batch_rows: int = 64  # rows sampled per call (the bake's generate_batch_size)
    extras: dict[str, Any] = field(default_factory=dict)  # generation_config extras, on every side (decoding.py)

    def greedy(self) -> SamplingConfig:
        return SamplingConfig(n=1, temperature=0.0, max_new_tokens=self.max_new_tokens,
                              min_new_tokens=1, stop_ids=list(self.renderer.stop_ids), extras=dict(self.extras))

    def prefixes(self, queries: Sequence[Query], prompted: bool) -> list[Prefix]:
        r = self.renderer
        return [Prefix(ids=r.prefix(q, prompted), messages=tuple(r.messages(q, prompted))) for q in queries]

    def sample(self, side: str, queries: Sequence[Query], sampling: SamplingConfig,
               strength: float = 1.0) -> list[Sample]:
        """One sample per query from ``side`` (the first of ``sampling.n``)."""
        return [group[0] for group in self.sample_groups(side, queries, sampling, strength)]

    def sample_groups(self, side: str, queries: Sequence[Query], sampling: SamplingConfig,
                      strength: float = 1.0) -> list[list[Sample]]:
        """``sampling.n`` samples per query from ``side``."""
        prompted = side in ("prompted", "reprompted")
        pre = self.prefixes(queries, prompted)
        out: list[list[Sample]] = []
        with counter(len(queries), f"answers ({side})", self.show_progress, unit="query") as bar:
            for part in batches(pre, max(1, self.batch_rows // sampling.n)):
                if side == "prompted":
                    got = self.teacher.generate(part, sampling)
                else:
                    got = self.student.generate(part, sampling, strength=0.0 if side == "base" else strength)
                out.extend(got)
                bar.update(len(part))
        return out

    def text(self, sample: Sample) -> str:
        ids = [t for t in sample.token_ids if t not in self.renderer.stop_ids]
        return self.renderer.tokenizer.decode(ids, skip_special_tokens=True).strip()


def answer_stats(samples: Sequence[Sample], stop_ids: Sequence[int]) -> dict[str, float]:
    """Mean answer length in tokens, the share that finished, and distinct-1/2 over all answers."""
    seqs = [[t for t in s.token_ids if t not in stop_ids] for s in samples]
    out: dict[str, float] = {"answers": len(seqs)}
    out["mean_tokens"] = sum(map(len, seqs)) / max(len(seqs), 1)
    out["finished"] = sum(s.finished for s in samples) / max(len(samples), 1)
    for n in (1, 2):
        grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    return out


def answers(sides: Sides, queries: Sequence[Query], names: Sequence[str] = SIDES,
            strength: float = 1.0) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Greedy answers of each side: rows ``{query_id, question, <side>: text}`` and per-side statistics.

    A conversation of several user turns is answered turn by turn, each side with its own earlier
    answers as the history, one row per turn (with ``turn``)."""
    if all(q.user_turns <= 1 for q in queries):
        sampling = sides.greedy()
        rows: list[dict[str, Any]] = [{"query_id": q.id, "question": q.text} for q in queries]
        stats: dict[str, dict[str, float]] = {}
        for name in names:
            got = sides.sample(name, queries, sampling, strength)
            for row, sample in zip(rows, got):
                row[name] = sides.text(sample)
            stats[name] = answer_stats(got, sides.renderer.stop_ids)
        return rows, stats
    return _conversation_answers(sides, queries, names, strength)


def _conversation_answers(sides: Sides, queries: Sequence[Query], names: Sequence[str],
                          strength: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    sampling = sides.greedy()
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    stats: dict[str, dict[str, float]] = {}
    for name in names:
        state = [(q, [], 0) for q in queries]  # (query, this side's history, next data message)
        drawn: list[Sample] = []
        turn = 0
        while True:
            turn += 1
            asking = []
            for i, (q, history, pos) in enumerate(state):
                while pos < len(q.messages):
                    m = q.messages[pos]
                    pos += 1
                    history.append(dict(m))
                    if m["role"] == "user" and (pos == len(q.messages) or q.messages[pos]["role"] != "assistant"):
                        asking.append(i)
                        break
                state[i] = (q, history, pos)
            if not asking:
                break
            asked = [Query(id=state[i][0].id, messages=tuple(state[i][1]), tools=state[i][0].tools) for i in asking]
            for i, sample in zip(asking, sides.sample(name, asked, sampling, strength)):
                text = sides.text(sample)
                q, history, _ = state[i]
                row = rows.setdefault((q.id, turn), {"query_id": q.id, "turn": turn, "question": history[-1]["content"]})
                row[name] = text
                history.append({"role": "assistant", "content": text})
                drawn.append(sample)
        stats[name] = answer_stats(drawn, sides.renderer.stop_ids)
    return sorted(rows.values(), key=lambda r: (r["turn"], r["query_id"])), stats


def loglik_for(sides: Sides) -> Callable[[str, str, str], float]:
    """``loglik(side, question, continuation)``: the summed log-probability of ``continuation``
    as the reply to ``question`` (for multiple-choice probes). Prompted needs a teacher with
    full distributions (the hf teacher); base and baked are the student with its adapter off
    and on."""
    import torch

    teacher_full = sides.teacher.capabilities.can_score and sides.teacher.capabilities.full_logits

    def loglik(side: str, question: str, continuation: str) -> float:
        query = Query(id="probe", messages=({"role": "user", "content": question},))
        ids = sides.renderer.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        traj = sides.renderer.trajectory(query, ids or [sides.renderer.eot_id])
        if side in ("base", "baked"):
            targets = sides.student.score([traj], full=True, strength=0.0 if side == "base" else 1.0)[0]
        elif side == "prompted" and teacher_full:
            targets = sides.teacher.score([traj], top_k=None, full=True, side="prompted")[0]
        else:
            raise ConfigError(f"Multiple-choice probes need log-likelihoods for '{side}', which teacher "
                              f"'{sides.teacher.name}' cannot give; use the hf teacher.")
        rows = min(len(ids), len(targets))
        lp = targets.full_logprobs[:rows].float()  # type: ignore[index]
        return float(lp.gather(1, torch.tensor(traj.response_ids[:rows]).unsqueeze(1)).sum())

    return loglik


def probe_scores(probes: Sequence[Probe], rows: Sequence[dict[str, str]], names: Sequence[str],
                 loglik: Callable[[str, str, str], float] | None) -> dict[str, dict[str, float]]:
    """``{probe label: {side: score in [0, 1]}}``."""
    out: dict[str, dict[str, float]] = {}
    for probe in probes:
        sides = [n for n in names if n != "reprompted"] if probe.needs_model else list(names)
        out[probe.label] = probe.evaluate(rows, sides, loglik if probe.needs_model else None)
    return out


def sampled_probe_scores(probes: Sequence[Probe], sides: Sides, queries: Sequence[Query],
                         samples: dict[str, list[list[Sample]]]) -> dict[str, dict[str, float]]:
    """``{probe label: {side: score}}`` over every sampled answer of each side (text probes only).

    Greedy answers show each model's single most likely reply; a bake matches the
    prompted model's *distribution*, which these scores compare.
    """
    out: dict[str, dict[str, float]] = {}
    for probe in probes:
        scores = out.setdefault(probe.label, {})
        for side, groups in samples.items():
            rows = [{"question": q.text, side: sides.text(s)} for q, group in zip(queries, groups) for s in group]
            scores.update(probe.evaluate(rows, [side]))
    return out


def on_policy(sides: Sides, queries: Sequence[Query], sampling: SamplingConfig, top_k: int,
              batch_size: int = 8, samples: dict[str, list[Sample]] | None = None) -> dict[str, Any] | None:
    """KL(prompted || base) on the base model's own samples and KL(prompted || baked) on the baked
    model's, with the gap closed; None when the teacher cannot score. Base and baked are the
    student with its adapter off and on. ``samples`` holds samples already drawn per side (one
    per query), used instead of sampling again."""
    tc = sides.teacher.capabilities
    if not tc.can_score:
        return None
    full = tc.full_logits
    out: dict[str, Any] = {"kl": "full" if full else f"top-{top_k} with tail (a lower bound)"}
    tallies: dict[str, Tally] = {}
    for name in ("base", "baked"):
        drawn = (samples or {}).get(name) or sides.sample(name, queries, sampling)
        trajs = trajectories_of(sides.renderer, queries, drawn)
        tally = tallies[name] = Tally(full)
        for part in batches(trajs, batch_size):
            prompted = BatchTargets.concat(sides.teacher.score(part, top_k=top_k, full=full, side="prompted"))
            strength = 0.0 if name == "base" else 1.0
            other = BatchTargets.concat(sides.student.score(part, full=True, strength=strength)).full_logprobs
            tally.add(prompted, other, response_positions(part))
        out[f"kl_prompted_{name}"] = tally.mean_kl
        out[f"top1_agreement_{name}"] = tally.agreement
        out[f"tokens_{name}"] = tally.tokens
    if "base" in tallies and tallies["base"].mean_kl > 0:
        out["gap_closed"] = 1.0 - tallies["baked"].mean_kl / tallies["base"].mean_kl
    return out


def prompted_samples(sides: Sides, queries: Sequence[Query], sampling: SamplingConfig,
                     held: Sequence[Trajectory]) -> list[list[Sample]]:
    """``sampling.n`` samples per query from the prompted side, the first of each the query's
    held-out trajectory: the teacher sampled it with the prompt at the bake's settings, so
    it is already one such answer. Without one trajectory for every query (conversations,
    other queries), all ``n`` are sampled."""
    mine = {t.query_id: t for t in held if t.turn == 1}
    first = [mine.get(q.id) for q in queries]
    if len(mine) != len(held) or any(t is None for t in first):
        return sides.sample_groups("prompted", queries, sampling)
    more = (sides.sample_groups("prompted", queries, replace(sampling, n=sampling.n - 1)) if sampling.n > 1
            else [[] for _ in queries])
    return [[Sample(list(t.response_ids), t.finished), *rest] for t, rest in zip(first, more)]  # type: ignore[union-attr]


def trajectories_of(renderer: Renderer, queries: Sequence[Query], samples: Sequence[Sample]) -> list[Trajectory]:
    """Render samples (one per query) as trajectories."""
    return [renderer.trajectory(q, s.token_ids) for q, s in zip(queries, samples)]
