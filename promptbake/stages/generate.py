"""The generate stage: the prompted teacher's samples, chunk by chunk, each chunk saved as it completes.

Queries are split into fixed chunks; chunk ``c`` samples with a seed derived
from (bake seed, split, c), so a chunk's samples do not depend on which chunks
ran before it in this process. Each finished chunk is written atomically to
``RUN/generate/`` under a key over everything that determines it; a bake that
stops half-way and is resumed reads the finished chunks back and samples only
the rest, and the result equals an uninterrupted run's. Under a distributed launch rank
``c % world`` samples chunk ``c`` and every rank reads the rest (run/distributed.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..core import decoding
from ..core.batching import batches
from ..core.config import BakeConfig
from ..core.errors import ConfigError
from ..core.interfaces import SamplingConfig, Teacher
from ..core.progress import counter
from ..core.types import Prefix, Query, Targets, Trajectory
from ..run import files
from ..run.chunks import ChunkStore
from ..run.distributed import Ranks
from ..run.rundir import RunDir
from .render import MixtureRenderer, Renderer

CHUNK_QUERIES = 64  # queries per saved chunk: what a crash can cost at most


def chunk_seed(seed: int, split: str, chunk: int) -> int:
    """A 31-bit sampling seed for one chunk of one split."""
    digest = hashlib.sha256(f"{seed}:{split}:{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def chunk_key(teacher: Teacher, model: str, sampling: SamplingConfig, prefixes: Sequence[Prefix],
              n_queries: int) -> str:
    """A sha256 over what determines a chunk's samples."""
    h = hashlib.sha256()
    h.update(json.dumps([str(teacher), model, sampling.n, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                         sampling.min_new_tokens, sampling.seed, list(sampling.stop_ids), sampling.logprobs,
                         n_queries, *([sorted(sampling.extras.items())] if sampling.extras else [])]).encode())
    for p in prefixes:
        h.update(json.dumps([p.ids, list(p.messages)]).encode())
    return h.hexdigest()


def generate(teacher: Teacher, renderer: Renderer, queries: Sequence[Query], sampling: SamplingConfig,
             split: str, store: ChunkStore | None = None, show_progress: bool = True,
             log: Any = None, model: str = "", ranks: Ranks | None = None) -> tuple[list[Trajectory],
                                                                                  list[Targets] | None]:
    """Trajectories (``sampling.n`` per query) and, when every sample carried them, their targets.

    ``sampling.seed`` is the bake's seed; each chunk samples with :func:`chunk_seed`.
    Chunks found whole in ``store`` under the same key (teacher, ``model``, sampling and
    prompts) are read instead of sampled. Under a distributed launch (``ranks``) this process
    makes only its chunks (:meth:`Ranks.mine`) and reads the others' from ``store`` once every
    process has written its own; every process returns the whole, in chunk order.
    """
    ranks = ranks or Ranks()
    got: dict[int, tuple[list[Trajectory], list[Targets] | None]] = {}
    keys: dict[int, str] = {}
    reused: list[int] = []
    with counter(len(queries), f"generate ({split})", show_progress, unit="query") as bar:
        for c, part in enumerate(batches(list(queries), CHUNK_QUERIES)):
            rendered = [(renderer.prefix(q, True), renderer.prefix(q, False)) for q in part]
            prefixes = [Prefix(ids=p, messages=tuple(renderer.messages(q, True))) for q, (p, _) in zip(part, rendered)]
            chunk_sampling = replace(sampling, seed=chunk_seed(sampling.seed, split, c))
            keys[c] = key = chunk_key(teacher, model, chunk_sampling, prefixes, len(part))
            if not ranks.mine(c):
                continue
            found = store.read(c, key) if store is not None else None
            if found is not None:
                reused.append(c)
            else:
                found = _sample(teacher, renderer, part, rendered, prefixes, chunk_sampling)
                if store is not None:
                    store.write(c, key, *found)
            got[c] = found
            bar.update(len(part))
    record: dict[str, Any] = {"chunks_reused": len(reused)} if reused else {}
    if ranks.world > 1:
        assert store is not None, "a distributed generate hands its chunks over through the run directory"
        done = ranks.gather({"sampled": sorted(set(got) - set(reused)), "reused": len(reused)})
        for c in sorted(set(keys) - set(got)):  # the others' chunks, all written before the gather
            got[c] = ranks.written(store.read(c, keys[c]), c, f"chunk {c} of split {split}", store.folder)
        record = {"chunks_reused": sum(d["reused"] for d in done), "sampled_by_rank": [d["sampled"] for d in done]}
    if log is not None and record:
        log({"stage": "generate", "split": split, **record})
    trajectories = [t for c in sorted(got) for t in got[c][0]]
    targets = [t for c in sorted(got) for t in (got[c][1] or [])]
    return trajectories, (targets if trajectories and len(targets) == len(trajectories) else None)


def _sample(teacher: Teacher, renderer: Renderer, queries: Sequence[Query], rendered: Sequence[tuple[list[int], list[int]]],
            prefixes: Sequence[Prefix], sampling: SamplingConfig) -> tuple[list[Trajectory], list[Targets] | None]:
    samples = teacher.generate(prefixes, sampling)
    out: list[Trajectory] = []
    targets: list[Targets] = []
    for q, pre, group in zip(queries, rendered, samples):
        for i, sample in enumerate(group):
            traj = renderer.trajectory(q, sample.token_ids, i, prefixes=pre)
            out.append(traj)
            if sample.targets is not None:
                targets.append(cut_to(traj, sample.targets))
    return out, (targets if out and len(targets) == len(out) else None)


def cut_to(traj: Trajectory, targets: Targets) -> Targets:
    """A sample's targets cut to the trajectory (which may end earlier), on its tokens."""
    import torch

    if len(targets) < traj.response_len:
        raise ConfigError(f"The teacher gave {len(targets)} target rows for a {traj.response_len}-token "
                          f"response ({traj.key}); a teacher must give one row per sampled token.")
    out = targets.head(traj.response_len)
    out.sampled_ids = torch.tensor(traj.response_ids, dtype=torch.long)
    return out


def sample_logprobs(teacher: Teacher, kind: str, config: BakeConfig) -> int | None:
    """The top-K a teacher must send with its samples: where the loss needs a distribution and the
    teacher cannot score given text but gives log-probs with its own samples (hosted APIs)."""
    tc = teacher.capabilities
    return config.top_k if kind != "tokens" and not tc.can_score and tc.sample_logprobs else None


def sample_split(teacher: Teacher, renderer: Renderer, queries: Sequence[Query], n: int, config: BakeConfig,
                 extras: dict[str, Any], run: RunDir | None = None, split: str = "train",
                 logprobs: int | None = None, ranks: Ranks | None = None) -> tuple[list[Trajectory],
                                                                                   list[Targets] | None]:
    """The stage for one split: ``n`` samples per query at the bake's sampling settings (plus
    the generation_config ``extras`` every side samples with; ``logprobs``: the top-K a hosted
    teacher must send with its samples), chunks saved under ``RUN/generate/``.

    In a mixture bake each query is answered under the prompt it is assigned (split
    ``{split}-p{i}`` for prompt i), and the trajectories come back in query order. Under a
    distributed launch (``ranks``) every process calls this alike and samples its chunks of
    each round (:func:`generate`); rank 0 alone writes the records.
    """
    sampling = decoding.bake_sampling(config, renderer.stop_ids, extras, n=n, logprobs=logprobs)
    model = config.teacher_model or config.model
    ranks = ranks or Ranks()
    log = run.log if run is not None and ranks.main else None

    def one(r: Renderer, part: Sequence[Query], name: str) -> tuple[list[Trajectory], list[Targets] | None]:
        def rounds(queries: Sequence[Query], at: str, sampled: SamplingConfig) -> tuple[list[Trajectory],
                                                                                        list[Targets] | None]:
            store = ChunkStore(run.file(files.GENERATE), at) if run is not None else None
            return generate(teacher, r, queries, sampled, at, store, config.progress, log, model=model, ranks=ranks)

        if all(is_single_turn(q) for q in part):
            return rounds(part, name, sampling)
        if not teacher.capabilities.can_score and any(m["role"] == "assistant" for q in part for m in q.messages):
            raise ConfigError(f"Assistant turns given in the data are trained on the teacher's distribution over them, "
                              f"which teacher '{teacher.name}' cannot give (it scores no given text); use a teacher "
                              f"that scores (hf, vllm) or give user turns only.")
        # Held-out conversations are evaluated on every turn, whatever the bake trains on.
        return conversations(r, part, sampling, name, rounds, "all" if split == "heldout" else config.train_turns)

    if not isinstance(renderer, MixtureRenderer):
        return one(renderer, queries, split)
    assigned = renderer.assign(queries, config.seed, split)
    if log is not None:
        log({"stage": "mixture", "split": split, "queries_per_prompt": renderer.counts[split]})
    slots: list[tuple[list[Trajectory], list[Targets] | None]] = [([], None) for _ in queries]
    all_targets = True
    for i, prompted in enumerate(renderer.renderers):
        positions = [j for j, a in enumerate(assigned) if a == i]
        if not positions:
            continue
        trajs, targets = one(prompted, [queries[j] for j in positions], f"{split}-p{i}")
        all_targets = all_targets and targets is not None
        k = 0  # samples come query after query: hand each query its own run of them
        for j in positions:
            start = k
            while k < len(trajs) and k - start < n and trajs[k].query_id == queries[j].id:
                k += 1
            slots[j] = (trajs[start:k], targets[start:k] if targets is not None else None)
        if k != len(trajs):
            raise ConfigError(f"The teacher's samples for split {split} do not follow the queries' order.")
    out = [t for ts, _ in slots for t in ts]
    return out, ([tg for _, tgs in slots for tg in (tgs or [])] if all_targets else None)


def planned_trajectories(queries: Sequence[Query], config: BakeConfig, written: int | None = None) -> int:
    """How many trajectories a bake trains on (its LR schedule's length): of ``queries``, or of
    ``written`` single queries still to be written (``queries = "generate:N"``)."""
    if written:
        return written * config.samples_per_query * (config.turns if config.train_turns == "all" else 1)
    return trained_turns(queries, config.samples_per_query, config.train_turns)


def trained_turns(queries: Sequence[Query], n: int, train_turns: str = "all") -> int:
    """How many trajectories sampling ``n`` per query gives: each conversation's assistant turns
    (given ones, and one per user or tool turn that the teacher answers), or its last only."""
    def turns(q: Query) -> int:
        msgs = q.messages
        answered = sum(m["role"] in ("user", "tool") and (i + 1 == len(msgs) or msgs[i + 1]["role"] != "assistant")
                       for i, m in enumerate(msgs))
        return answered + sum(m["role"] == "assistant" for m in msgs)

    return n * sum(turns(q) if train_turns == "all" else 1 for q in queries)


def is_single_turn(query: Query) -> bool:
    """One user message to answer and nothing else: the plain (and first) case."""
    return len(query.messages) == 1 and query.messages[0]["role"] == "user"


@dataclass
class _Branch:
    """One sampled conversation: its query, which of the ``n`` samples it is, and how far it got."""

    query: Query
    sample: int
    history: list[dict[str, Any]] = field(default_factory=list)
    pos: int = 0
    turns: list[tuple[Trajectory, Targets | None]] = field(default_factory=list)

    def at(self) -> Query:
        q = self.query
        return Query(id=q.id, messages=tuple(self.history), category=q.category, tools=q.tools)

    def advance(self, renderer: Renderer) -> bool:
        """Take the data's messages up to the next point where the teacher answers (True), or to the end.
        An assistant message given in the data is a turn of its own, trained as it is."""
        msgs = self.query.messages
        while self.pos < len(msgs):
            m = msgs[self.pos]
            self.pos += 1
            if m["role"] == "assistant":
                self.add(renderer.given(self.at(), m, self.sample), None, m)
                continue
            self.history.append(dict(m))
            if m["role"] in ("user", "tool") and (self.pos == len(msgs) or msgs[self.pos]["role"] != "assistant"):
                return True
        return False

    def add(self, traj: Trajectory, targets: Targets | None, message: dict[str, Any]) -> None:
        traj.sample, traj.turn = self.sample, len(self.turns) + 1
        self.turns.append((traj, targets))
        self.history.append(message)


def conversations(renderer: Renderer, queries: Sequence[Query], sampling: SamplingConfig, split: str,
                  rounds: Any, train_turns: str = "all") -> tuple[list[Trajectory], list[Targets] | None]:
    """Every assistant turn of each conversation, in order: the prompted teacher answers each user
    turn with the system prompt present, its answer becoming the history of the next turn
    (assistant turns given in the data are kept). Round 1 samples ``sampling.n`` answers per query
    (split ``split``); each later round continues every one of them once (``{split}-t{r}``).
    ``train_turns``: "all" of them are trained, or only each conversation's "last"."""
    branches = [_Branch(q, s) for q in queries for s in range(sampling.n)]
    waiting = [b for b in branches if b.advance(renderer)]
    r = 0
    while waiting:
        r += 1
        if r == 1:  # the n samples of a query share its first prompt: sampled together, n at a time
            firsts = [b for b in waiting if b.sample == 0]
            trajs, targets = rounds([b.at() for b in firsts], split, sampling)
            place = {id(b.query): i for i, b in enumerate(firsts)}
            pairs = [(b, place[id(b.query)] * sampling.n + b.sample) for b in waiting]
        else:
            trajs, targets = rounds([b.at() for b in waiting], f"{split}-t{r}", replace(sampling, n=1))
            pairs = list(zip(waiting, range(len(waiting))))
        for b, i in pairs:
            b.add(trajs[i], targets[i] if targets is not None else None, {"role": "assistant", "content": trajs[i].text})
        waiting = [b for b in waiting if b.advance(renderer)]
    out = [pair for b in branches for pair in (b.turns if train_turns == "all" else b.turns[-1:])]
    given = all(t is not None for _, t in out)
    return [t for t, _ in out], ([t for _, t in out] if given and out else None)  # type: ignore[misc]
