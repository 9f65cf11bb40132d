from __future__ import annotations

import functools
from dataclasses import dataclass, field

from iclft import UserError
from iclft.tasks.base import Example, Task

ROLES = {"bos": 0, "instruction": 1, "demo": 2, "label": 3, "separator": 4, "query": 5}


@dataclass
class Prompt:
    ids: list[int]
    roles: list[int]  # one ROLES value per token
    demo_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each demonstration
    query_span: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, role: str) -> list[int]:
        r = ROLES[role]
        return [i for i, x in enumerate(self.roles) if x == r]


def too_many(k: int, most: int, max_len: int, how: str, alone: str) -> str:
    """The one-line error for k demonstrations that do not fit the context (`most`: the largest k that does, -1
    when `alone`, the query that must fit, does not fit even without demonstrations)."""
    if most < 0:
        return f"no prompt fits the model's context window ({max_len} tokens), {how}: {alone} does not fit"
    return (f"no prompt with {k} demonstrations fits the model's context window ({max_len} tokens), {how}: at most "
            f"{most} demonstrations fit")


class PromptBuilder:
    """Tokenizes each segment on its own (cached) and concatenates ids.

    For closed label sets the label words' first tokens (as they follow a query, i.e. tokenized with the
    answer prefix) must differ: they are what a prediction is read from.
    """

    def __init__(self, tokenizer, task: Task, max_len: int | None = None):
        self.tok = tokenizer
        self.task = task
        self.max_len = max_len
        self._lengths: dict[str, int] = {}
        bos = getattr(tokenizer, "bos_token_id", None)
        self.prefix = [bos] if bos is not None else []
        self.label_token_ids: list[int] | None = None
        if task.label_words:
            if len(set(task.label_words)) < 2:  # accuracy would be 1.0 whatever the model does
                raise UserError(f"task {task.name!r} has one label only ({task.label_words[0]!r}); a classification "
                                "task needs at least two")
            encoded = [self._enc(task.answer_prefix + w) for w in task.label_words]
            if any(not e for e in encoded):
                raise UserError(f"task {task.name!r}: a label word tokenizes to nothing")
            unk = getattr(tokenizer, "unk_token_id", None)
            unknown = [w for w, e in zip(task.label_words, encoded, strict=True) if unk is not None and unk in e]
            if unknown:  # every word outside the vocabulary is this one token: the model cannot tell them apart
                raise UserError(f"task {task.name!r}: label word {unknown[0]!r} is not in the tokenizer's vocabulary "
                                f"(it tokenizes to {tokenizer.unk_token}); choose label words the model knows")
            ids = [e[0] for e in encoded]
            if len(set(ids)) != len(ids):
                clash = [w for w, i in zip(task.label_words, ids, strict=True) if ids.count(i) > 1]
                raise UserError(
                    f"task {task.name!r}: label words {clash} share their first token; "
                    "predictions are read from it, so choose label words that start differently"
                )
            self.label_token_ids = ids

    @functools.lru_cache(maxsize=100_000)  # noqa: B019 - builders live as long as a study
    def _enc(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok(text, add_special_tokens=False)["input_ids"])

    def build(
        self,
        query: Example,
        demos: list[Example] = (),
        labels: list[str] | None = None,
        instruction: bool = True,
        demo_task: Task | None = None,
    ) -> Prompt:
        """demo_task renders the demonstrations with another task's template (the unrelated-task control)."""
        t = self.task
        d = demo_task or t
        ids, roles = list(self.prefix), [ROLES["bos"]] * len(self.prefix)

        def add(text: str, role: str):
            seg = self._enc(text)
            ids.extend(seg)
            roles.extend([ROLES[role]] * len(seg))

        if instruction and t.instruction:
            add(t.instruction, "instruction")
            add(t.separator, "separator")
        spans = []
        labels = labels if labels is not None else [d.label for d in demos]
        for demo, label in zip(demos, labels, strict=True):
            start = len(ids)
            add(d.query_text(demo), "demo")
            add(d.answer_prefix + label, "label")
            spans.append((start, len(ids)))
            add(t.separator, "separator")
        qstart = len(ids)
        add(t.query_text(query), "query")
        prompt = Prompt(ids, roles, spans, (qstart, len(ids)))
        if self.max_len is not None and len(prompt) > self.max_len:
            n_query, n_demos = len(ids) - qstart, qstart - len(self.prefix) - (
                len(self._enc(t.instruction)) + len(self._enc(t.separator)) if instruction and t.instruction else 0)
            cause = (f"the query alone has {n_query} tokens" if len(prompt) - n_demos > self.max_len
                     else f"{len(demos)} demonstrations take {n_demos} tokens and the query {n_query}; "
                     "use fewer demonstrations")
            raise UserError(f"a prompt has {len(prompt)} tokens, more than the model's context window "
                            f"({self.max_len}): {cause}")
        return prompt

    def fit(self, queries: list[Example], demo_pools: list[tuple[list[Example], Task]], k: int
            ) -> tuple[int, list[Example], list[list[Example]]]:
        """Skip the fewest, longest examples such that any k demonstrations (from any of `demo_pools`, each
        rendered with its task's template) fit before any query, with the instruction: every prompt a study can
        draw then fits, whatever the seed. Returns (token cap per example, kept queries, kept pools). When no
        skipping makes k fit, the error names the largest k that does.

        An example's cost is what it adds to a prompt: a query its templated text, a demonstration its text,
        answer prefix, longest label word and separator. Nothing is skipped when the worst case already fits.
        """
        if self.max_len is None:
            return 0, queries, [p for p, _ in demo_pools]
        q_cost, pools = self._costs(queries, demo_pools)
        caps = sorted(set(q_cost).union(*pools), reverse=True)
        cap = next((c for c in caps if self._most_demos(q_cost, pools, c) >= k), None)
        if cap is None:
            most = max(self._most_demos(q_cost, pools, c) for c in caps)
            raise UserError(too_many(k, most, self.max_len, "even skipping the longest examples",
                                     f"the shortest query alone ({min(q_cost)} tokens)"))
        kept_q = [q for q, c in zip(queries, q_cost, strict=True) if c <= cap]
        kept = [[e for e, c in zip(pool, cs, strict=True) if c <= cap] for (pool, _), cs in zip(demo_pools, pools,
                                                                                                 strict=True)]
        return cap, kept_q, kept

    def most_demos(self, queries: list[Example], demo_pools: list[tuple[list[Example], Task]]) -> int:
        """The largest k such that any k demonstrations (from any of `demo_pools`) fit before any query, with the
        instruction, skipping nothing; -1 when some query does not fit even alone."""
        if self.max_len is None:
            return max(len(p) for p, _ in demo_pools)
        q_cost, pools = self._costs(queries, demo_pools)
        return self._most_demos(q_cost, pools, max(q_cost + [c for cs in pools for c in cs]))

    def _overhead(self) -> int:
        t = self.task
        return len(self.prefix) + (len(self._enc(t.instruction)) + len(self._enc(t.separator)) if t.instruction else 0)

    def _costs(self, queries, demo_pools) -> tuple[list[int], list[list[int]]]:
        """Tokens each query adds to a prompt, and each demonstration of each pool."""
        t = self.task

        def costs(texts: list[str]) -> list[int]:
            new = [x for x in dict.fromkeys(texts) if x not in self._lengths]
            if new:  # one batched call: tokenizing a 38k-example split one text at a time takes seconds
                ids = self.tok(new, add_special_tokens=False, verbose=False)["input_ids"]
                self._lengths.update((x, len(i)) for x, i in zip(new, ids, strict=True))
            return [self._lengths[x] for x in texts]

        pools = []
        for pool, task in demo_pools:
            labels = task.label_words or sorted({e.label for e in pool})
            tail = max((len(self._enc(task.answer_prefix + w)) for w in labels), default=0)
            tail += len(self._enc(t.separator))
            pools.append([c + tail for c in costs([task.query_text(e) for e in pool])])
        return costs([t.query_text(q) for q in queries]), pools

    def _most_demos(self, q_cost: list[int], pools: list[list[int]], cap: int) -> int:
        """The largest k such that the k costliest demonstrations of every pool fit before the costliest query,
        counting only examples that cost at most `cap`; -1 when no query is left or the longest left does not
        fit alone."""
        qs = [c for c in q_cost if c <= cap]
        room = self.max_len - self._overhead() - max(qs) if qs else -1
        if room < 0:
            return -1
        most = []
        for cs in pools:
            kept = sorted((c for c in cs if c <= cap), reverse=True)
            n, total = 0, 0
            while n < len(kept) and total + kept[n] <= room:
                total += kept[n]
                n += 1
            most.append(n)
        return min(most, default=0)

    def training_ids(self, ex: Example, label: str | None = None, instruction: bool = True, demo_task=None):
        """(ids, answer_mask) of one templated demonstration for tuning: [instruction] + input + answer."""
        d = demo_task or self.task
        ids = list(self.prefix)
        if instruction and self.task.instruction:
            ids += list(self._enc(self.task.instruction)) + list(self._enc(self.task.separator))
        ids += list(self._enc(d.query_text(ex)))
        n = len(ids)
        ans = list(self._enc(d.answer_prefix + (ex.label if label is None else label)))
        return ids + ans, [0] * n + [1] * len(ans)
