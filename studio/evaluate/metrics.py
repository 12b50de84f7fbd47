"""Generation metrics: BLEU-4 and ROUGE-1/2/L per sample, on a 0-100 scale, for any language.

    s = score("I am Pico.", "I am Pico, an assistant.")   # {"bleu-4": ..., "rouge-1": ..., "rouge-2": ..., "rouge-l": ...}
    m = mean([s, ...])                                     # the corpus figure: mean of sentence-level scores

Both metrics see the same tokens: the text is cut into words by jieba (Chinese and Japanese text has no
spaces; English and other space-separated text comes out as its words), lowercased, and tokens made only of
punctuation or symbols are dropped. This is rouge-score's default tokenizer (lowercase, words only) without
its flaw of deleting every non-Latin character.

    BLEU-4   nltk sentence_bleu, weights 1/4 each, smoothing method3 (NIST geometric: the k-th n-gram order
             with no match counts 1/2^k matches), so short answers do not score 0 by construction.
             (LLaMA-Factory computes BLEU on characters; here it is computed on the same words as ROUGE.)
    ROUGE-N  rouge-score F-measure of clipped n-gram overlap; ROUGE-L: F-measure of the longest common
             subsequence.
An empty prediction or reference scores 0.
"""
from __future__ import annotations

import logging
import unicodedata

KEYS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
_ROUGE = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}


def _is_word(tok: str) -> bool:
    return any(not unicodedata.category(ch).startswith(("P", "S", "Z", "C")) for ch in tok)


def tokenize(text: str) -> list[str]:
    """Words of `text`, lowercased, punctuation and whitespace dropped; CJK text is segmented by jieba."""
    if not text:
        return []
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [t.lower() for t in (s.strip() for s in jieba.lcut(text)) if t and _is_word(t)]


class _Tokenizer:
    """What rouge-score asks for: an object with tokenize(text) -> list of tokens."""

    def tokenize(self, text):
        return tokenize(text)


_scorer = None


def _rouge_scorer():
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(list(_ROUGE.values()), tokenizer=_Tokenizer())
    return _scorer


def bleu4(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 (0-100) of one prediction against one reference."""
    hyp, ref = tokenize(prediction), tokenize(reference)
    if not hyp or not ref:
        return 0.0
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return 100.0 * sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method3)


def rouge(prediction: str, reference: str) -> dict:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0-100)."""
    if not tokenize(prediction) or not tokenize(reference):
        return {k: 0.0 for k in _ROUGE}
    scores = _rouge_scorer().score(reference, prediction)  # rouge-score takes (target, prediction)
    return {k: 100.0 * scores[v].fmeasure for k, v in _ROUGE.items()}


def score(prediction: str | None, reference: str | None) -> dict:
    """All four metrics of one sample, rounded to 4 decimals."""
    prediction, reference = prediction or "", reference or ""
    out = {"bleu-4": bleu4(prediction, reference), **rouge(prediction, reference)}
    return {k: round(out[k], 4) for k in KEYS}


def mean(per_sample: list[dict]) -> dict:
    """Mean of sentence-level scores (how LLaMA-Factory reports them); {} when there are none."""
    if not per_sample:
        return {}
    return {k: round(sum(s[k] for s in per_sample) / len(per_sample), 4) for k in KEYS}
