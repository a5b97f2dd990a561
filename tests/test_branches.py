"""ui.branches: the tree of branches a user explores from alternative tokens (pure, no model)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from core import Candidate, Step
from ui import branches
from ui import generate_view as gv


def _cand(tid: int, text: str, p: float, raw: float, logit: float) -> Candidate:
    return Candidate(token_id=tid, text=text, prob=p, raw_prob=raw, logit=logit)


# One distribution for every position: raw top 3 are ids 1, 2, 3 (logits 3 > 2 > 1); the filters kept 1, 2.
BEFORE = (_cand(1, " a", 0.6, 0.5, 3.0), _cand(2, " b", 0.4, 0.3, 2.0), _cand(3, "<c>", 0.0, 0.2, 1.0))
AFTER = BEFORE[:2]


def _step(i: int, tid: int = 1, text: str = " a", prob: float = 0.6) -> Step:
    return Step(index=i, token_id=tid, text=text, prob=prob, raw_prob=0.5, rank=1, entropy=1.0, raw_entropy=1.5,
                top_before=BEFORE, top_after=AFTER, uniform=0.25, prompt_tokens=2, truncated=0)


ORIGINAL = tuple(_step(i) for i in range(5))


def _tree() -> tuple[branches.Branch, ...]:
    """branch 1: from the original at #3 with " b", then 2 generated; branch 2: from branch 1 at #4 with <c>."""
    first = branches.choice_step(ORIGINAL[2], BEFORE[1], rank=2, finished=None)
    tree = branches.add_branch((), 0, first)
    for k in range(2):
        tree = branches.extend(tree, 1, _step(k, text=" x"))   # indices from the branch's own generation
    second = branches.choice_step(branches.path(ORIGINAL, tree, 1)[3], BEFORE[2], rank=3, finished="length")
    return branches.add_branch(tree, 1, second)


def test_paths_share_the_parent_up_to_the_split() -> None:
    tree = _tree()
    assert branches.path(ORIGINAL, tree, 0) == ORIGINAL
    one = branches.path(ORIGINAL, tree, 1)
    assert one[:2] == ORIGINAL[:2] and [s.index for s in one] == [0, 1, 2, 3, 4]
    assert one[2].token_id == 2 and one[2].prob == 0.4 and one[2].raw_prob == 0.3 and one[2].rank == 2
    assert one[2].entropy == ORIGINAL[2].entropy and one[2].top_before == BEFORE   # the same distribution
    two = branches.path(ORIGINAL, tree, 2)
    assert two[:3] == one[:3] and two[3].text == "<c>" and two[3].prob == 0.0 and len(two) == 4
    assert branches.text_of(two) == " a a b<c>"
    assert branches.continuation_ids([7, 8], ORIGINAL, tree, 2) == [7, 8, 1, 1, 2, 3]
    assert [branches.depth(tree, b) for b in range(3)] == [0, 1, 2]


def test_alternatives_rank_and_choice() -> None:
    step = _step(0, tid=2, text=" b", prob=0.4)
    assert [c.token_id for c in branches.alternatives(step)] == [1, 3]      # the taken token left out
    assert [branches.rank_among(step, t) for t in (1, 2, 3, 99)] == [1, 2, 3, None]
    with pytest.raises(ValueError, match="token 2 is the one the branch already took at #1"):
        branches.choice_step(step, BEFORE[1], rank=2, finished=None)


def test_home_find_and_limits() -> None:
    tree = _tree()
    assert branches.home(tree, 1, 2) == 0            # branch 1's chosen token: its siblings split from the original
    assert branches.home(tree, 2, 3) == 1 and branches.home(tree, 2, 2) == 2 and branches.home(tree, 1, 4) == 1
    assert branches.find(tree, 0, 2, 2) == 1 and branches.find(tree, 1, 3, 3) == 2 and branches.find(tree, 0, 2, 3) is None
    with pytest.raises(ValueError, match="branch 5 does not exist"):
        branches.add_branch(tree, 5, ORIGINAL[0])
    full = tuple(tree[0] for _ in range(branches.MAX_BRANCHES))
    with pytest.raises(ValueError, match=f"at most {branches.MAX_BRANCHES} branches"):
        branches.add_branch(full, 0, ORIGINAL[0])


def test_tree_rows_and_escaped_html() -> None:
    tree = _tree()
    rows = branches.tree_rows(ORIGINAL, tree)
    assert [(r["branch"], r["depth"], r["parent"], r["at"]) for r in rows] == [(0, 0, None, None), (1, 1, 0, 2), (2, 2, 1, 3)]
    assert (rows[1]["token"], rows[1]["replaced"], rows[1]["prob"], rows[1]["raw_prob"]) == ("␣b", "␣a", 0.4, 0.3)
    assert rows[2]["preview"] == "<c>" and rows[2]["tokens"] == 4
    html = branches.tree_html(ORIGINAL, tree, selected=2)
    assert "<c>" not in html and "&lt;c&gt;" in html                          # model text is escaped
    assert "branch 2</b> from branch 1 at #4" in html and "40.0%</span> after filters, 30.0% raw" in html
    assert html.count("sl-here") == 2 and 'data-branch="2" style="margin-left:2.8rem"' in html  # 1 rule + 1 node
    assert branches.label(ORIGINAL, tree, 1) == "branch 1: #3 ␣b (40.0%)"


def test_check_names_the_bad_branch() -> None:
    tree = list(_tree())
    branches.check(ORIGINAL, tree)
    cases = [
        (dataclasses.replace(tree[1], parent=2), r"branches\[1\].parent must be an earlier branch \(0 to 1\), got 2"),
        (dataclasses.replace(tree[1], at=5), r"branches\[1\].at must be a token of branch 1 \(0 to 4\), got 5"),
        (dataclasses.replace(tree[1], steps=()), "must hold at least the chosen token"),
        (dataclasses.replace(tree[1], steps=(dataclasses.replace(tree[1].steps[0], index=0),)), r"steps\[0\].index must be 3"),
        (dataclasses.replace(tree[1], steps=(tree[0].steps[1],), at=3), r"takes token 1 at #4, the one its parent took"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            branches.check(ORIGINAL, [tree[0], bad])


def _run(tree: tuple[branches.Branch, ...]) -> gv.Run:
    cfg = gv.SamplingConfig(seed=3)
    return gv.Run(model="m", model_label="m", prompt="hi", prompt_mode="raw", sampling=cfg, max_new_tokens=5,
                  steps=ORIGINAL, status="done", branches=tree)


def test_the_tree_travels_in_the_run_file() -> None:
    run = _run(_tree())
    doc = json.loads(gv.run_to_json(run))
    assert [(b["parent"], b["at"], len(b["steps"])) for b in doc["branches"]] == [(0, 2, 3), (1, 3, 1)]
    assert gv.parse_run(gv.run_to_json(run)) == run
    del doc["branches"]                                          # files saved before branches existed
    assert gv.parse_run(json.dumps(doc)).branches == ()
    doc["branches"] = [{"parent": 0, "at": 9, "steps": []}]
    with pytest.raises(gv.RunFormatError, match=r"branches\[0\].at must be a token of branch 0"):
        gv.parse_run(json.dumps(doc))
    doc["branches"] = [{"parent": 0, "at": 1, "steps": [{"index": 1}]}]
    with pytest.raises(gv.RunFormatError, match=r"branches\[0\].steps\[0\]: missing field 'finished'"):
        gv.parse_run(json.dumps(doc))


def test_start_branch_and_forced_tokens() -> None:
    run = _run(())
    run, b, remaining = gv.start_branch(run, 0, 2, 2, rank=2)
    assert (b, remaining, run.branches[0].choice.token_id, run.branches[0].choice.finished) == (1, 2, 2, None)
    assert gv.forced(run, 1, 2) and not gv.forced(run, 1, 1) and not gv.forced(run, 0, 2)
    end, b2, left = gv.start_branch(run, 0, 4, 2, rank=2)          # the last token: nothing left to generate
    assert (b2, left, end.branches[1].choice.finished) == (2, 0, "length")
    with pytest.raises(ValueError, match="token 99 is not among the alternatives recorded at #3"):
        gv.start_branch(run, 0, 2, 99, rank=1)
    state: dict = {}
    gv.show_branch(state, run, 1)
    assert state == {gv.view_key(run): 1, gv.inspect_branch_key(run): 1, gv.inspect_key(run, 1): 2}


def test_picker_data_is_plain_text() -> None:
    steps = (_step(0, text="<b>x</b>"), _step(1, tid=2, text="\n", prob=0.4))
    data = gv.picker_data("<i>p</i>", "raw", steps, ends={2}, selected=1, split=0)
    assert data["prompt"] == "<i>p</i>" and data["copy"] == "<b>x</b>\n"       # the component sets textContent
    assert [t["t"] for t in data["tokens"]] == ["<b>x</b>", "↵\n"]
    assert [t["end"] for t in data["tokens"]] == [False, True] and (data["selected"], data["split"]) == (1, 0)
    assert data["tokens"][1]["tip"].startswith("#2 ↵") and data["tokens"][1]["tip"].endswith(gv.END_NOTE)
    state = {gv.RUN_KEY: _run(()), "k": {"pick": 3}}
    gv.take_pick(state, 0, "k")
    assert state[gv.inspect_branch_key(state[gv.RUN_KEY])] == 0 and state[gv.inspect_key(state[gv.RUN_KEY], 0)] == 3
    for bad in (7, -1, True, "2", None):                              # out of range or not an index: ignored
        state = {gv.RUN_KEY: _run(()), "k": {"pick": bad}}
        gv.take_pick(state, 0, "k")
        assert set(state) == {gv.RUN_KEY, "k"}
