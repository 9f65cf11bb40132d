import random

import pytest

from iclft import UserError
from iclft.prompts import ROLES, PromptBuilder, corrupt_labels, select_demos
from iclft.tasks.base import Example, Task


def make_task(words=("positive", "negative")):
    train = [Example(f"the movie {i} was good", "positive") for i in range(10)]
    train += [Example(f"the film {i} was bad", "negative") for i in range(10)]
    return Task("toy", train, train[:4], instruction="Classify the review.", template="Review: {input}\nSentiment:",
                label_words=list(words))


def test_query_tokens_identical_across_settings(tok):
    task = make_task()
    b = PromptBuilder(tok, task)
    q = Example("i loved this film", "positive")
    zsl = b.build(q, [], instruction=True)
    icl = b.build(q, task.train[:3], instruction=True)
    bare = b.build(q, task.train[:5], instruction=False)
    qs = [p.ids[p.query_span[0]:p.query_span[1]] for p in (zsl, icl, bare)]
    assert qs[0] == qs[1] == qs[2]
    assert zsl.ids[zsl.query_span[0]:] == icl.ids[icl.query_span[0]:]
    assert [ROLES["query"]] * len(qs[0]) == icl.roles[icl.query_span[0]:]
    # the prompt is exactly the concatenation of its separately tokenized segments
    text_ids = tok(task.query_text(q), add_special_tokens=False)["input_ids"]
    assert qs[0] == text_ids


def test_roles_and_spans(tok):
    task = make_task()
    b = PromptBuilder(tok, task)
    demos = task.train[:2]
    p = b.build(Example("good", "positive"), demos, labels=["negative", "positive"])
    assert len(p.demo_spans) == 2
    label_pos = p.positions("label")
    assert [tok.convert_ids_to_tokens(p.ids[i]) for i in label_pos] == ["negative", "positive"]
    assert p.roles[0] == ROLES["bos"] and ROLES["instruction"] in p.roles
    assert b.build(Example("good", "positive"), demos, instruction=False).roles.count(ROLES["instruction"]) == 0


def test_label_word_collision_is_an_input_error(tok):
    with pytest.raises(UserError, match="share their first token"):
        PromptBuilder(tok, make_task(("good", "Good")))  # the toy tokenizer lower-cases


def test_a_task_with_one_label_is_an_input_error(tok):
    # it used to run, every prediction right whatever the model did
    for words in (("positive",), ("positive", "positive")):
        with pytest.raises(UserError, match=r"^task 'toy' has one label only \('positive'\)"):
            PromptBuilder(tok, make_task(words))


def test_a_label_word_outside_the_vocabulary_is_an_input_error(tok):
    # it used to be accepted: its every token is <unk>, which any other unknown word shares
    assert tok("zzqxa", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    with pytest.raises(UserError, match=r"^task 'toy': label word 'zzqxa' is not in the tokenizer's vocabulary"):
        PromptBuilder(tok, make_task(("positive", "zzqxa")))
    PromptBuilder(tok, make_task(("positive", "negative")))  # known words pass


def test_fit_refuses_a_k_that_fits_in_no_way_and_names_the_largest_that_does(tok):
    import re

    task = make_task()
    b = PromptBuilder(tok, task, max_len=60)
    with pytest.raises(UserError, match=r"context window \(60 tokens\)") as err:
        b.fit(task.test, [(task.train, task)], 50)
    most = int(re.search(r"at most (\d+) demonstrations fit", str(err.value)).group(1))
    cap, queries, (pool,) = b.fit(task.test, [(task.train, task)], most)  # the largest k that fits does
    longest = sorted(pool, key=lambda e: len(tok(task.query_text(e))["input_ids"]))[-most:]
    assert all(len(b.build(q, longest)) <= 60 for q in queries)
    with pytest.raises(UserError):
        b.fit(task.test, [(task.train, task)], most + 1)
    # skipping nothing, most_demos is the largest k such that any k demonstrations fit before any query
    k = b.most_demos(task.test, [(task.train, task)])
    assert 0 < k <= most
    worst = sorted(task.train, key=lambda e: len(tok(task.query_text(e))["input_ids"]))
    assert all(len(b.build(q, worst[-k:])) <= 60 for q in task.test)
    assert any(len(b.__class__(tok, task).build(q, worst[-(k + 1):])) > 60 for q in task.test)


def test_prompt_too_long_is_an_input_error(tok):
    task = make_task()
    b = PromptBuilder(tok, task, max_len=30)
    with pytest.raises(UserError, match="context window"):
        b.build(task.test[0], task.train[:8])


def test_label_corruption():
    demos = [Example("a", "positive"), Example("b", "negative"), Example("c", "positive")]
    words = ["negative", "positive"]
    assert corrupt_labels(demos, "gold", words, random.Random(0)) == ["positive", "negative", "positive"]
    assert corrupt_labels(demos, "flipped", words, random.Random(0)) == ["negative", "positive", "negative"]
    rnd = corrupt_labels(demos, "random", words, random.Random(0))
    assert rnd == corrupt_labels(demos, "random", words, random.Random(0)) and set(rnd) <= set(words)


class FakeEmbedder:
    """Embeds a text as [n_good, n_bad] normalised: similarity ranks are known by hand."""

    def __call__(self, texts):
        import numpy as np

        v = np.array([[t.count("good") + 0.1, t.count("bad") + 0.1] for t in texts], dtype=float)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_similarity_selection():
    task = make_task()
    q = Example("good good", "positive")
    most = select_demos(q, task.train, 3, "most_similar", random.Random(1), FakeEmbedder())
    least = select_demos(q, task.train, 3, "least_similar", random.Random(1), FakeEmbedder())
    assert all("good" in d.input for d in most)
    assert all("bad" in d.input for d in least)
    r1 = select_demos(q, task.train, 4, "random", random.Random(7))
    assert r1 == select_demos(q, task.train, 4, "random", random.Random(7)) and len(set(r1)) == 4
    with pytest.raises(UserError):
        select_demos(q, task.train, 50, "random", random.Random(0))
