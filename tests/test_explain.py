"""A verdict's explanation is the session's surprise split into per-template terms that add up to it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusionlog.data import load_dataset
from fusionlog.explain import HAS, LACKS, NEW, explain_surprise
from fusionlog.model import ReferenceStats
from fusionlog.types import Session


def _stats() -> ReferenceStats:
    """10 sessions: all have 0 and 1, one also has 2; template 3 is in the table but in no session."""
    sessions = [Session("s", str(i), [0, 1] + ([2] if i == 0 else [])) for i in range(10)]
    return ReferenceStats.from_sessions(sessions, 4)


def test_terms_name_what_is_rare_new_and_missing():
    why = explain_surprise(_stats(), [0, 2, 2, 7])
    terms = {(d.event_id, d.kind): d.cost for d in why.top}
    assert terms[(7, NEW)] == 1.0  # outside the table: one never-seen template
    assert terms[(2, HAS)] == pytest.approx(math.log(11 / 2) / math.log(11))  # in 1 of 10 sessions
    assert terms[(1, LACKS)] == pytest.approx(1.0)  # every session has it
    assert set(terms) == {(7, NEW), (2, HAS), (1, LACKS)}  # 0 is in every session (free); lacking 3 is usual
    assert [d.cost for d in why.top] == sorted((d.cost for d in why.top), reverse=True)
    assert sum(terms.values()) + why.rest == pytest.approx(why.surprise)
    assert why.surprise == pytest.approx(_stats().surprise([0, 2, 7], in_corpus=False))


def test_a_template_weighted_zero_costs_nothing_and_is_not_named():
    stats = _stats().with_have_weights(np.array([1.0, 1.0, 0.0, 1.0]))
    why = explain_surprise(stats, [0, 1, 2])
    assert why.top == () and why.surprise == pytest.approx(0.0)
    assert explain_surprise(_stats(), [0, 1, 2]).top[0].event_id == 2


def test_the_reason_names_the_largest_terms_first():
    names = {0: "start", 1: "finish", 2: "retry disk", 7: "new line"}
    text = explain_surprise(_stats(), [0, 2, 7]).summary(names.__getitem__)
    assert text.startswith(f"{_stats().surprise([0, 2, 7], False):.2f} units of surprise: ")
    assert "has new 'new line' (1.00)" in text and "lacks usual 'finish' (1.00)" in text
    assert text.endswith("has rare 'retry disk' (0.71)")  # the smallest of the three last


def test_terms_add_up_to_the_surprise_of_every_real_session(data_dir):
    ds = load_dataset("openstack", data_dir, progress=False)
    pool, test = ds.sessions[:3000], ds.sessions[3000:3600]
    stats = ReferenceStats.from_sessions(pool, len(ds.templates))
    listed = 0
    for s in test:
        why = explain_surprise(stats, s.event_ids, top=10**6)
        assert why.rest >= 0 and all(d.cost >= 0.005 for d in why.top)
        assert sum(d.cost for d in why.top) + why.rest == pytest.approx(stats.surprise(s.event_ids, False), abs=1e-6)
        # what a session lacks: only steps most pool sessions have
        assert all(2 * stats.doc_freq[d.event_id] > stats.n_sessions for d in why.top if d.kind == LACKS)
        listed += len(why.top)
    assert listed > len(test)  # the sessions do depart: not every explanation is empty
