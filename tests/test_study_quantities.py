"""Each study declares the interval rule of its own metrics; `stats.QUANTITIES` is the full table."""

import subprocess
import sys

import pytest

from iclft.metrics import stats
from iclft.studies import convergence, dual_view, implicit_patterns
from tests.conftest import ENV

STUDIES = (convergence, dual_view, implicit_patterns)


def test_full_table_is_the_shared_rows_and_every_studys_own():
    own = [set(m.QUANTITIES) for m in STUDIES]
    assert all(own) and not set.intersection(*own)  # no metric is declared by two studies
    table = dict(stats.QUANTITIES)
    for m in STUDIES:
        assert {k: table[k] for k in m.QUANTITIES} == m.QUANTITIES
    shared = set(table) - set.union(*own)
    assert shared == {"u_icl", "u_it", "u_sl", "u_ft", "changed_icl", "changed_it", "changed_sl", "changed_ft",
                      "accuracy"}
    assert stats.quantity("simaou") is stats.COSINE and stats.quantity("acc_diff") is stats.DIFF_PROPORTION
    assert stats.quantity("acc_icl") is stats.PROPORTION
    with pytest.raises(KeyError, match="declare"):
        stats.quantity("no_such_metric")


def test_a_metric_cannot_get_two_rules():
    assert stats.declare_quantities({"simaou": stats.COSINE}) == {"simaou": stats.COSINE}  # the same rule again
    with pytest.raises(ValueError, match="already declared"):
        stats.declare_quantities({"simaou": stats.POSITIVE})
    with pytest.raises(TypeError):
        stats.QUANTITIES["new_metric"] = stats.REAL  # read-only: rows come through declare_quantities


def test_table_is_full_before_any_study_is_imported():
    code = ("import sys; import iclft.metrics.stats as s; before = 'iclft.studies.dual_view' in sys.modules; "
            "from iclft.metrics.stats import QUANTITIES as q; "
            "print(before, len(q), 'simaou' in q, 'shift_jaccard' in q, 'pearson_r' in q)")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", str(len(stats.QUANTITIES)), "True", "True", "True"]
