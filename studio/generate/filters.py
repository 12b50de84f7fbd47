"""Which generated instructions are kept: the self-instruct filters, in the order they are applied.

    f = Filters(threshold=0.7, out_of_scope=["image", ...], min_words=3, max_words=150)
    f.add("a seed instruction")              # index without checking (seed tasks, instructions kept earlier)
    reason, detail = f.offer("a new one")    # None: kept and indexed; else why it was dropped

Reasons: too_short, too_long, out_of_scope, duplicate (same text), near_duplicate (same words after lowercasing
and dropping punctuation), similar (ROUGE-L F-measure >= threshold against a kept instruction).

Words are those of studio/evaluate/metrics.py (jieba for Chinese and Japanese, lowercased, punctuation dropped), so the
similarity is exactly rouge-score's ROUGE-L with the metrics' tokenizer: the plain all-pairs rule is
`all_pairs_keep` below. It is not computed against every kept instruction: ROUGE-L F = 2 LCS / (m + n), and the
LCS of two token lists is at most the number of tokens they share (counted with repeats), so only instructions
that share at least threshold * (m + n) / 2 tokens can reach the threshold. An inverted index from each token
(with its occurrence number: `the#1`, `the#2`) to the instructions holding it counts the shared tokens of all
kept instructions at once (numpy), and the exact LCS (bit-parallel, on Python integers) runs on those candidates
only.
"""
from __future__ import annotations

import re
from array import array

import numpy as np

from studio.evaluate import metrics

REASONS = ("too_short", "too_long", "out_of_scope", "duplicate", "near_duplicate", "similar")


def lcs_length(a: list[str], b: list[str], masks: dict | None = None) -> int:
    """Length of the longest common subsequence of two token lists (bit-parallel: one pass over `b`)."""
    if not a or not b:
        return 0
    masks = masks if masks is not None else token_masks(a)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def token_masks(tokens: list[str]) -> dict:
    masks: dict = {}
    for i, t in enumerate(tokens):
        masks[t] = masks.get(t, 0) | (1 << i)
    return masks


def rouge_l(target: list[str], prediction: list[str], lcs: int | None = None) -> float:
    """rouge-score's ROUGE-L F-measure of two token lists (the same float as rouge_scorer._score_lcs)."""
    from rouge_score import scoring

    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction) if lcs is None else lcs
    return scoring.fmeasure(lcs / len(prediction), lcs / len(target))


def scope_pattern(words: list[str]) -> re.Pattern | None:
    """One regex for the out-of-scope words: whole words (any case) for Latin script, plain substrings otherwise."""
    parts = []
    for w in words:
        w = str(w).strip()
        if not w:
            continue
        body = r"\s+".join(re.escape(x) for x in w.split())
        parts.append(rf"\b{body}\b" if w.isascii() else body)
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


class Filters:
    def __init__(self, threshold: float = 0.7, out_of_scope: list[str] = (), min_words: int = 3, max_words: int = 150):
        self.threshold = threshold
        self.scope = scope_pattern(list(out_of_scope))
        self.min_words, self.max_words = min_words, max_words
        self.texts: list[str] = []
        self.tokens: list[list[str]] = []
        self.masks: list[dict] = []
        self.lengths = array("i")
        self.postings: list[array] = []
        self.feature_ids: dict[str, int] = {}
        self.exact: set[str] = set()
        self.near: set[str] = set()

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def _features(tokens: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        out = []
        for t in tokens:
            seen[t] = seen.get(t, 0) + 1
            out.append(f"{t}#{seen[t]}")
        return out

    def add(self, text: str, tokens: list[str] | None = None) -> None:
        """Index an instruction as kept (no checks)."""
        tokens = metrics.tokenize(text) if tokens is None else tokens
        i = len(self.texts)
        self.texts.append(text)
        self.tokens.append(tokens)
        self.masks.append(token_masks(tokens))
        self.lengths.append(len(tokens))
        self.exact.add(text.strip())
        self.near.add(" ".join(tokens))
        for f in self._features(tokens):
            fid = self.feature_ids.get(f)
            if fid is None:
                fid = self.feature_ids[f] = len(self.postings)
                self.postings.append(array("i"))
            self.postings[fid].append(i)

    def most_similar(self, tokens: list[str]) -> tuple[int, float] | None:
        """The first kept instruction (most shared tokens first) whose ROUGE-L with `tokens` reaches the threshold."""
        n = len(self.texts)
        if not n or not tokens:
            return None
        lists = [self.postings[fid] for fid in (self.feature_ids.get(f) for f in self._features(tokens)) if fid is not None]
        if not lists:
            return None
        shared = np.bincount(np.concatenate([np.frombuffer(p, dtype=np.int32) for p in lists]), minlength=n)
        lengths = np.frombuffer(self.lengths, dtype=np.int32)
        need = self.threshold * (len(tokens) + lengths) / 2.0 - 1e-9
        cands = np.nonzero(shared >= need)[0]
        del lists, lengths
        if not len(cands):
            return None
        for j in cands[np.argsort(-shared[cands], kind="stable")].tolist():
            lcs = lcs_length(self.tokens[j], tokens, self.masks[j])
            score = rouge_l(self.tokens[j], tokens, lcs)
            if score >= self.threshold:
                return j, score
        return None

    def check(self, text: str, tokens: list[str] | None = None) -> tuple[str | None, dict]:
        """(reason, detail) for an instruction that would be dropped; (None, {}) for one that passes."""
        text = text.strip()
        tokens = metrics.tokenize(text) if tokens is None else tokens
        if len(tokens) < self.min_words:
            return "too_short", {"words": len(tokens)}
        if len(tokens) > self.max_words:
            return "too_long", {"words": len(tokens)}
        if self.scope is not None:
            m = self.scope.search(text)
            if m:
                return "out_of_scope", {"word": m.group(0)}
        if text in self.exact:
            return "duplicate", {}
        if " ".join(tokens) in self.near:
            return "near_duplicate", {}
        hit = self.most_similar(tokens)
        if hit is not None:
            return "similar", {"rouge_l": round(hit[1], 4), "like": self.texts[hit[0]]}
        return None, {}

    def offer(self, text: str) -> tuple[str | None, dict]:
        """Check an instruction; keep (index) it when it passes."""
        text = text.strip()
        tokens = metrics.tokenize(text)
        reason, detail = self.check(text, tokens)
        if reason is None:
            self.add(text, tokens)
        return reason, detail


def all_pairs_keep(pool: list[str], candidates: list[str], threshold: float = 0.7) -> list[str]:
    """The plain rule, for reference: keep a candidate when its ROUGE-L (rouge-score's own LCS table, on the metrics'
    words) against every instruction of the pool and every candidate kept before it is below the threshold."""
    from rouge_score.rouge_scorer import _score_lcs

    kept, pool = [], [metrics.tokenize(p) for p in pool]
    for c in candidates:
        tokens = metrics.tokenize(c)
        if all(_score_lcs(p, tokens).fmeasure < threshold for p in pool):
            kept.append(c)
            pool.append(tokens)
    return kept
