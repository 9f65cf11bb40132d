"""Implicit rows of the ability table, plus one training rule per family, at the small size (issue 11).

The diagnostic behind the card's "implicit-only run" section: can the model compute the families at all
(a training rule), and does it pick up the held-out rule from 8 demonstrations?

    python -m iclft.builtin.pretrain --out DIR --set "stages=$(cat docs/builtin-v2-implicit-only.stages.json)" \
        --set bf16=false --minutes 32
    python docs/builtin-v2-implicit-only.eval.py DIR/final 150
"""

import random
import sys

from iclft.builtin.abilities import Query, _scorer, score
from iclft.models.load import load
from iclft.tasks.implicit import DEFAULT_RULE, FAMILIES, SIZES, TRAIN_RULES, implicit_task

loaded = load(sys.argv[1])
n, seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 150, 3
for fam in FAMILIES:
    out = []
    for rule in (DEFAULT_RULE[fam], TRAIN_RULES[fam][0]):  # held-out rule, then the first training rule
        for k in (0, 8):
            res: list[bool] = []
            for s in range(seeds):
                task = implicit_task(fam, seed=s, n_train=64, n_test=n // seeds, rule=rule, **SIZES["small"][fam])
                sc = _scorer(loaded, task)
                rng = random.Random(f"x/{fam}/{k}/{s}")
                res += score(loaded.model, [Query(sc.builder.build(ex, rng.sample(task.train, k)).ids, ex.label, sc)
                                            for ex in task.test])
            out.append(f"{rule}@{k}={sum(res) / len(res):.2f}")
    print(fam, " ".join(out), flush=True)
