"""BLEU-4 and ROUGE on fixed English and Chinese strings, against a hand computation of the same definitions."""
from __future__ import annotations

import math
from collections import Counter

import pytest

from studio.evaluate import metrics

# (prediction, reference, the words both metrics must see)
CASES = [
    ("I am Pico, an AI assistant.", "I am Pico, an AI assistant fine-tuned with studio.",
     ["i", "am", "pico", "an", "ai", "assistant"],
     ["i", "am", "pico", "an", "ai", "assistant", "fine", "tuned", "with", "studio"]),
    ("The cat sat on the mat with the other cat.", "The cat is on the mat.",
     ["the", "cat", "sat", "on", "the", "mat", "with", "the", "other", "cat"],
     ["the", "cat", "is", "on", "the", "mat"]),
    ("我是一个人工智能助手。", "我是Pico，一个由studio微调的人工智能助手。",
     ["我", "是", "一个", "人工智能", "助手"],
     ["我", "是", "pico", "一个", "由", "studio", "微调", "的", "人工智能", "助手"]),
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们一起去公园。",
     None, None),  # tokens checked for content only (jieba's segmentation), scores still checked by hand
]


def ngrams(toks, n):
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


def rouge_n(hyp, ref, n):
    h, r = ngrams(hyp, n), ngrams(ref, n)
    overlap = sum((h & r).values())
    if not overlap:
        return 0.0
    p, rc = overlap / sum(h.values()), overlap / sum(r.values())
    return 100 * 2 * p * rc / (p + rc)


def lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def rouge_l(hyp, ref):
    m = lcs(hyp, ref)
    if not m:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    return 100 * 2 * p * r / (p + r)


def bleu4(hyp, ref):
    """Papineni BLEU-4, one reference, clipped counts, NIST geometric smoothing for orders with no match."""
    logs, k = [], 1
    for n in range(1, 5):
        h, r = ngrams(hyp, n), ngrams(ref, n)
        match, total = sum((h & r).values()), max(1, sum(h.values()))
        if n == 1 and match == 0:
            return 0.0
        if match == 0:
            p = 1 / (2 ** k * total)
            k += 1
        else:
            p = match / total
        logs.append(math.log(p) / 4)
    c, r = len(hyp), len(ref)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(sum(logs))


@pytest.mark.parametrize("pred,ref,hyp_toks,ref_toks", CASES)
def test_metrics_equal_hand_computation(pred, ref, hyp_toks, ref_toks):
    hyp, gold = metrics.tokenize(pred), metrics.tokenize(ref)
    if hyp_toks is not None:
        assert hyp == hyp_toks and gold == ref_toks
    else:  # jieba cut it into words; together they spell the text minus punctuation
        assert "".join(hyp) == pred.replace("，", "").replace("。", "") and len(hyp) < len(pred) - 2
    got = metrics.score(pred, ref)
    want = {"bleu-4": bleu4(hyp, gold), "rouge-1": rouge_n(hyp, gold, 1), "rouge-2": rouge_n(hyp, gold, 2),
            "rouge-l": rouge_l(hyp, gold)}
    for key in metrics.KEYS:
        assert got[key] == pytest.approx(want[key], abs=0.01), key
    assert 0 < got["rouge-l"] < 100 and got["bleu-4"] > 0


def test_hand_values_pinned():
    """The first case worked out on paper: 6 of 6 words match, brevity penalty exp(1 - 10/6)."""
    got = metrics.score(*CASES[0][:2])
    assert got["rouge-1"] == pytest.approx(75.0, abs=0.01)  # P=1, R=0.6
    assert got["rouge-2"] == pytest.approx(100 * 2 * 1 * (5 / 9) / (1 + 5 / 9), abs=0.01)
    assert got["bleu-4"] == pytest.approx(100 * math.exp(1 - 10 / 6), abs=0.01)  # all precisions 1


def test_chinese_is_not_dropped():
    """rouge-score's own tokenizer deletes CJK characters, scoring every Chinese pair 0; ours does not."""
    assert metrics.score("我是助手", "我是助手")["rouge-l"] == pytest.approx(100.0)
    assert metrics.score("我是助手", "你好世界")["rouge-1"] == 0.0
    assert metrics.score("私はピコです", "私はピコです")["bleu-4"] == pytest.approx(100.0)


@pytest.mark.parametrize("pred,ref", [("", "a reference"), ("a prediction", ""), (None, "x"), ("...", "a b"), ("", "")])
def test_empty_scores_zero(pred, ref):
    assert metrics.score(pred, ref) == {k: 0.0 for k in metrics.KEYS}


def test_mean_of_sentence_scores():
    a, b = metrics.score("the cat", "the cat"), metrics.score("a dog", "the cat")
    assert a["rouge-l"] == pytest.approx(100.0) and b["rouge-l"] == 0.0
    assert metrics.mean([a, b])["rouge-l"] == pytest.approx(50.0)
    assert metrics.mean([]) == {}
