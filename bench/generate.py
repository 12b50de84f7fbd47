"""The self-instruct similarity filter at scale: 10,000 instructions through studio.generate.filters.Filters.

    .venv/bin/python bench/generate.py [--n 10000] [--check 600] [--out bench/results/generate.json]

No data set of machine-written instructions ships offline, so they are made here, reproducibly (seed 0): English
instructions from a small grammar (verb, object, topic, constraint; 4-30 words), one in five in Chinese, and one in
three a variant of an earlier one (a word or two changed, added or dropped: the near-copies a model writes), so
the ROUGE-L rule has work to do. Reports the time to tokenize and filter all of them (threshold 0.7, Alpaca's
out-of-scope words and length bounds), the kept count, the drop reasons, and, on the first --check instructions,
whether the kept set equals the plain all-pairs rule's.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VERBS = ["Explain", "Describe", "Summarize", "Write", "List", "Compare", "Classify", "Translate", "Rewrite", "Suggest",
         "Give", "Create", "Evaluate", "Identify", "Outline", "Analyze", "Propose", "Define", "Discuss", "Predict"]
OBJECTS = ["a short story", "three tips", "the main idea", "a haiku", "the differences", "a persuasive paragraph",
           "five examples", "a recipe", "an email", "a product description", "the pros and cons", "a riddle",
           "a step-by-step plan", "a tweet", "a limerick", "a cover letter", "an analogy", "a summary", "two arguments",
           "a dialogue", "a list of questions", "a slogan", "a poem", "the key facts", "a lesson plan"]
TOPICS = ["climate change", "machine learning", "the French revolution", "healthy sleep", "remote work", "photosynthesis",
          "black holes", "personal finance", "the water cycle", "ancient Rome", "electric cars", "honey bees",
          "public speaking", "volcanoes", "the stock market", "vaccines", "time management", "chess openings",
          "renewable energy", "the human heart", "urban gardening", "the printing press", "ocean tides", "coffee",
          "quantum computing", "friendship", "the Olympic games", "recycling", "desert animals", "jazz history"]
TAILS = ["", "", "for a ten-year-old", "in under fifty words", "using simple language", "for a business audience",
         "with a touch of humor", "in the style of a news report", "without using technical terms",
         "and explain your reasoning", "as a numbered list", "for a beginner who has never heard of it"]
ZH_VERBS = ["解释", "描述", "总结", "写", "列出", "比较", "翻译", "改写", "建议", "评价"]
ZH_OBJECTS = ["一个短故事", "三个建议", "主要观点", "一首诗", "不同之处", "一封邮件", "五个例子", "优点和缺点", "一个比喻"]
ZH_TOPICS = ["气候变化", "机器学习", "健康睡眠", "远程办公", "光合作用", "黑洞", "个人理财", "水循环", "古罗马", "电动汽车", "时间管理"]
ZH_TAILS = ["", "给小学生看", "不超过五十个字", "用简单的语言", "用新闻报道的风格"]
FILLER = ["please", "briefly", "carefully", "clearly", "also", "then", "really", "new", "short", "simple", "good"]


def synthetic(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        r = rng.random()
        if out and r < 0.33:
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 2)):
                op, k = rng.random(), rng.randrange(len(words))
                if op < 0.4:
                    words[k] = rng.choice(FILLER)
                elif op < 0.7 or len(words) < 4:
                    words.insert(k, rng.choice(FILLER))
                else:
                    del words[k]
            out.append(" ".join(words))
        elif r < 0.53:
            out.append(f"{rng.choice(ZH_VERBS)}{rng.choice(ZH_OBJECTS)}，关于{rng.choice(ZH_TOPICS)}{rng.choice(ZH_TAILS)}。")
        else:
            parts = [rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(["about", "on", "related to", "for"]), rng.choice(TOPICS)]
            if rng.random() < 0.5:
                parts += ["and", rng.choice(["mention", "include", "compare it with"]), rng.choice(TOPICS)]
            parts.append(rng.choice(TAILS))
            out.append(" ".join(p for p in parts if p).strip() + rng.choice([".", "?", "", "!"]))
    return out


def measure(n: int = 10000, check: int = 600) -> dict:
    from studio.evaluate import metrics
    from studio.generate.filters import Filters, all_pairs_keep
    from studio.spec import OUT_OF_SCOPE

    texts = synthetic(n)
    metrics.tokenize("warm up jieba 加载词典")  # the dictionary loads once per process (~1 s); not part of the filter
    f = Filters(0.7, OUT_OF_SCOPE, 3, 150)
    reasons: dict[str, int] = {}
    t0 = time.perf_counter()
    for t in texts:
        reason, _ = f.offer(t)
        reasons[reason or "kept"] = reasons.get(reason or "kept", 0) + 1
    seconds = time.perf_counter() - t0
    result = {"instructions": n, "seconds": round(seconds, 2), "per_second": round(n / seconds, 1), "kept": len(f),
              "reasons": reasons}
    if check:
        sample = texts[:check]
        g = Filters(0.7, [], 1, 10 ** 6)
        fast = [t for t in sample if g.offer(t)[0] is None]
        t1 = time.perf_counter()
        plain = all_pairs_keep([], [t.strip() for t in sample], 0.7)
        result.update(check_sample=check, check_same_kept=fast == plain, check_kept=len(plain),
                      all_pairs_seconds=round(time.perf_counter() - t1, 2))
    return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--check", type=int, default=600)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    r = measure(a.n, a.check)
    print(json.dumps(r, indent=2, ensure_ascii=False))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
