"""Branches of a generation: at any token take one of the alternatives and continue from there.

Pure functions on frozen records (no Streamlit import), tested directly. Branch 0 is the original run;
every other branch splits from an earlier branch (its parent) at one token, where it takes another token
than the parent did, and goes on with what the model generated after it. Model text is untrusted: the
tree's HTML escapes every token.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from core import Candidate, Step
from ui.format import escape_html, fmt_prob, show_token

MAX_BRANCHES = 200      # per run: a run file with more is refused
PREVIEW_CHARS = 48      # how much of each branch's text the tree shows


@dataclass(frozen=True)
class Branch:
    """One explored branch: where it splits from its parent, and its own tokens from there on."""

    parent: int                 # the branch it splits from (0 = the original run; always an earlier one)
    at: int                     # 0-based token position where it takes another token than its parent
    steps: tuple[Step, ...]     # its tokens from `at` on: the chosen alternative first, then the generated ones

    @property
    def choice(self) -> Step:
        """The alternative the user took (its probabilities are those of the parent's step `at`)."""
        return self.steps[0]


def path(original: Sequence[Step], branches: Sequence[Branch], b: int) -> tuple[Step, ...]:
    """Every token of branch b (0 = the original), from the first generated token on."""
    if b == 0:
        return tuple(original)
    br = branches[b - 1]
    return path(original, branches, br.parent)[:br.at] + br.steps


def text_of(steps: Sequence[Step]) -> str:
    return "".join(s.text for s in steps)


def alternatives(step: Step) -> list[Candidate]:
    """The other tokens a step could have taken: its top alternatives after and before filtering, the
    chosen token left out, each once, most likely after filters first (then by raw probability)."""
    seen: dict[int, Candidate] = {}
    for c in (*step.top_after, *step.top_before):
        if c.token_id != step.token_id:
            seen.setdefault(c.token_id, c)
    return sorted(seen.values(), key=lambda c: (-c.prob, -c.raw_prob, c.token_id))


def rank_among(step: Step, token_id: int) -> int | None:
    """A token's rank under the raw logits, read off the step's raw top list; None when it is not there
    (then only the model can say)."""
    for c in step.top_before:
        if c.token_id == token_id:
            return 1 + sum(other.logit > c.logit for other in step.top_before)
    return None


def choice_step(step: Step, choice: Candidate, rank: int, finished: str | None) -> Step:
    """The step the user forces: the same distribution as `step` (same index, entropies, alternatives),
    another token. Nothing was drawn for it; `uniform` keeps the parent's number, unused."""
    if choice.token_id == step.token_id:
        raise ValueError(f"token {choice.token_id} is the one the branch already took at #{step.index + 1}")
    return dataclasses.replace(step, token_id=choice.token_id, text=choice.text, prob=choice.prob,
                               raw_prob=choice.raw_prob, rank=rank, finished=finished)


def home(branches: Sequence[Branch], b: int, at: int) -> int:
    """Where a branch taken at token `at` of branch b splits from: b itself, or, where that token is one a
    branch chose, the branch that chose it splits from (its alternatives are the same distribution's)."""
    while b and branches[b - 1].at == at:
        b = branches[b - 1].parent
    return b


def find(branches: Sequence[Branch], parent: int, at: int, token_id: int) -> int | None:
    """The branch already explored from (parent, at) with that token, or None."""
    for b, br in enumerate(branches, start=1):
        if br.parent == parent and br.at == at and br.choice.token_id == token_id:
            return b
    return None


def add_branch(branches: Sequence[Branch], parent: int, first: Step) -> tuple[Branch, ...]:
    """The tree with a new branch from `parent` whose first token is `first` (a choice_step)."""
    if not 0 <= parent <= len(branches):
        raise ValueError(f"branch {parent} does not exist (the tree has {len(branches) + 1} branches)")
    if len(branches) >= MAX_BRANCHES:
        raise ValueError(f"a run keeps at most {MAX_BRANCHES} branches")
    return (*branches, Branch(parent=parent, at=first.index, steps=(first,)))


def extend(branches: Sequence[Branch], b: int, step: Step) -> tuple[Branch, ...]:
    """The tree with one generated token added to branch b (b ≥ 1); `step.index` counts from the
    generation the branch started, so it is moved after the branch's own tokens."""
    br = branches[b - 1]
    moved = dataclasses.replace(step, index=br.at + len(br.steps))
    return (*branches[:b - 1], dataclasses.replace(br, steps=(*br.steps, moved)), *branches[b:])


def continuation_ids(prompt_ids: Sequence[int], original: Sequence[Step], branches: Sequence[Branch],
                     b: int) -> list[int]:
    """What the model reads to continue branch b: the prompt and every token of the branch so far."""
    return [*prompt_ids, *(s.token_id for s in path(original, branches, b))]


def depth(branches: Sequence[Branch], b: int) -> int:
    return 0 if b == 0 else 1 + depth(branches, branches[b - 1].parent)


def label(original: Sequence[Step], branches: Sequence[Branch], b: int) -> str:
    """A plain-text name for a branch: "original", or "branch 2: #5 ␣forward (17.6%)"."""
    if b == 0:
        return f"original ({len(original)} tokens)"
    br = branches[b - 1]
    return f"branch {b}: #{br.at + 1} {show_token(br.choice.text)} ({fmt_prob(br.choice.prob)})"


def tree_rows(original: Sequence[Step], branches: Sequence[Branch]) -> list[dict[str, object]]:
    """The tree depth first (children in the order explored): per branch, its edge and a preview."""
    children: dict[int, list[int]] = {}
    for b, br in enumerate(branches, start=1):
        children.setdefault(br.parent, []).append(b)
    rows: list[dict[str, object]] = []

    def visit(b: int) -> None:
        steps = path(original, branches, b)
        br = branches[b - 1] if b else None
        rows.append({"branch": b, "depth": depth(branches, b), "parent": br.parent if br else None,
                     "at": br.at if br else None, "token": show_token(br.choice.text) if br else None,
                     "prob": br.choice.prob if br else None, "raw_prob": br.choice.raw_prob if br else None,
                     "replaced": show_token(path(original, branches, br.parent)[br.at].text) if br else None,
                     "tokens": len(steps), "preview": text_of(steps[br.at if br else 0:])[:PREVIEW_CHARS]})
        for child in children.get(b, []):
            visit(child)

    visit(0)
    return rows


def tree_html(original: Sequence[Step], branches: Sequence[Branch], selected: int = 0) -> str:
    """The explored tree as nested, indented lines; each edge says where it splits and the chosen
    token's probability after filters (and raw). Every piece of model text is escaped."""
    lines = []
    for row in tree_rows(original, branches):
        preview = escape_html(show_token(str(row["preview"])) if row["preview"] else "∅")
        if row["branch"] == 0:
            head = f'<b>original</b> · {row["tokens"]} tokens'
        else:
            head = (f'<b>branch {row["branch"]}</b> from {"the original" if row["parent"] == 0 else "branch " + str(row["parent"])} '
                    f'at #{row["at"] + 1}: <code>{escape_html(str(row["token"]))}</code> instead of '
                    f'<code>{escape_html(str(row["replaced"]))}</code> · '
                    f'<span class="sl-edge">{fmt_prob(row["prob"])}</span> after filters, '
                    f'{fmt_prob(row["raw_prob"])} raw · {row["tokens"]} tokens')
        mark = " sl-here" if row["branch"] == selected else ""
        lines.append(f'<div class="sl-node{mark}" data-branch="{row["branch"]}" '
                     f'style="margin-left:{1.4 * int(row["depth"]):.1f}rem">'
                     f'{"└ " if row["depth"] else ""}{head}<div class="sl-preview">{preview}…</div></div>')
    return _TREE_STYLE + f'<div class="sl-tree">{"".join(lines)}</div>'


_TREE_STYLE = """<style>
.sl-tree{font-size:.9rem;line-height:1.5}
.sl-node{padding:.2rem .5rem;border-left:3px solid transparent;margin:.15rem 0}
.sl-here{border-left-color:#e69f00;background:rgba(230,159,0,.12)}
.sl-preview{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;opacity:.75;white-space:pre-wrap;
 word-break:break-word}
.sl-edge{font-weight:600}
</style>"""


def check(original: Sequence[Step], branches: Sequence[Branch]) -> None:
    """ValueError naming the first branch that does not fit the tree (a run file read back)."""
    for b, br in enumerate(branches, start=1):
        where = f"branches[{b - 1}]"
        if not 0 <= br.parent < b:
            raise ValueError(f"{where}.parent must be an earlier branch (0 to {b - 1}), got {br.parent}")
        parent = path(original, branches, br.parent)
        if not 0 <= br.at < len(parent):
            raise ValueError(f"{where}.at must be a token of branch {br.parent} (0 to {len(parent) - 1}), got {br.at}")
        if not br.steps:
            raise ValueError(f"{where}.steps must hold at least the chosen token")
        for k, s in enumerate(br.steps):
            if s.index != br.at + k:
                raise ValueError(f"{where}.steps[{k}].index must be {br.at + k}, got {s.index}")
        if br.choice.token_id == parent[br.at].token_id:
            raise ValueError(f"{where} takes token {br.choice.token_id} at #{br.at + 1}, the one its parent took")
