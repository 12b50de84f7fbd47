"""The Evaluate & Predict tab's pure parts: form -> spec, progress, metrics table, filtering and sorting predictions."""
from __future__ import annotations

import json

import pytest

from studio.evaluate import predictions
from studio import spec as specmod

TOP = {"model.name_or_path": "default", "method.finetuning_type": "lora", "model.quantization_bit": "none",
       "model.template": "auto", "model.adapter": "runs/identity_lora"}


@pytest.fixture(scope="module")
def tab():
    return pytest.importorskip("studio.ui.evaluate_tab")  # gradio: imported by the tests that need it, not at collection


def test_form_makes_an_eval_spec(tmp_path, tab):
    values = {"data.dataset_dir": "data", "data.eval_dataset": ["identity_eval"], "eval.compare": ["base"], "data.max_samples": "5",
              "data.cutoff_len": 512, "eval.batch_size": 4, "eval.max_new_tokens": 32, "eval.do_sample": True, "eval.temperature": 0.5,
              "eval.top_p": 0.8, "eval.top_k": 20, "eval.seed": 7, "eval.compute_loss": False, "output_dir": ""}
    spec = tab.make_spec(values, TOP, tmp_path / "runs", tmp_path)
    assert spec.task == "eval" and spec.model.adapter == "runs/identity_lora" and spec.eval.compare == ["base"]
    assert spec.data.max_samples == 5 and spec.eval.do_sample and spec.eval.top_k == 20 and not spec.eval.compute_loss
    assert spec.output_dir.startswith("runs/") and spec.output_dir.endswith("-eval-identity_eval")
    with pytest.raises(specmod.SpecError, match="data.eval_dataset"):
        tab.make_spec({**values, "data.eval_dataset": []}, TOP, tmp_path / "runs", tmp_path)
    with pytest.raises(specmod.SpecError, match="eval.batch_size"):
        tab.make_spec({**values, "eval.batch_size": "many"}, TOP, tmp_path / "runs", tmp_path)


def _rows():
    pairs = [("Who are you?", "I am Pico.", "I am Pico."), ("Your name?", "I am a model.", "I am Pico."),
             ("Hello", "Bonjour", "I am Pico, hello."), ("No reference here", "something", None)]
    rows = [{"query": q, "predict": p, "label": lab, "dataset": "d"} for q, p, lab in pairs]
    predictions.score_rows(rows)
    return [{"#": i, **r} for i, r in enumerate(rows)]


def test_filter_and_sort_predictions(tab):
    rows = _rows()
    worst = tab.filter_rows(rows, "rouge-l worst first")
    assert [r["#"] for r in worst] == [2, 1, 0, 3]  # unscored last
    assert [r["#"] for r in tab.filter_rows(rows, "rouge-l best first")] == [0, 1, 2, 3]
    assert [r["#"] for r in tab.filter_rows(rows, "dataset order")] == [0, 1, 2, 3]
    assert [r["#"] for r in tab.filter_rows(rows, "rouge-l worst first", lo=50, hi=100)] == [1, 0]
    assert [r["#"] for r in tab.filter_rows(rows, "bleu-4 best first", text="PICO")] == [0, 1, 2]
    frame = tab.predictions_frame(worst)
    assert list(frame.columns) == ["#", "bleu-4", "rouge-1", "rouge-2", "rouge-l", "query", "predict", "label"] and len(frame) == 4
    md = tab.extremes_md(rows, n=1)
    assert md.index("Worst") < md.index("Bonjour") < md.index("Best") < md.index("#0")


def test_results_of_a_run_folder(tmp_path, tab):
    rows = _rows()
    predictions.write_jsonl(tmp_path / "predictions-a.jsonl", [{k: v for k, v in r.items() if k != "#"} for r in rows])
    result = {"models": [{"name": "base", "predictions": "predictions-base.jsonl", "rouge-l": 1.0, "samples": 4},
                         {"name": "a", "predictions": "predictions-a.jsonl", "rouge-l": 50.0, "eval_loss": 0.5, "samples": 4}]}
    (tmp_path / "metrics.json").write_text(json.dumps(result))
    frame = tab.metrics_frame(predictions.load_results(tmp_path))
    assert list(frame["model"]) == ["base", "a"] and list(frame["rouge-l"]) == [1.0, 50.0]
    got = tab.read_predictions(tmp_path, "a")
    assert [r["query"] for r in got] == [r["query"] for r in rows] and got[0]["#"] == 0


def test_progress_bar_counts_samples(tab):
    events = [{"event": "start", "t": 1, "total_steps": 8}, {"event": "progress", "t": 2, "done": 3, "total": 8, "rate": 1.5,
                                                             "eta_s": 3.3, "model": "base"}]
    text = tab.progress_html(events, "running", "runs/e")
    assert "data-done='3'" in text and "data-total='8'" in text and "1.50 samples/s" in text and "model base" in text
    assert "data-done='8'" in tab.progress_html(events + [{"event": "done", "t": 3}], "done", "runs/e")


def test_a_pair_evaluation_counts_pairs_and_shows_one_row_per_model_with_its_columns_explained(tab):
    """Issue #32, item 4: progress in pairs (4 pairs x 1 run, not "1/1 samples"), a base row, columns explained, and
    the empty Predictions section saying why the generation settings do not apply."""
    from studio.evaluate import prefscore

    events = [{"event": "start", "t": 1, "total_steps": 4, "unit": "pairs"},
              {"event": "progress", "t": 2, "done": 3, "total": 4, "rate": 1.5, "unit": "pairs", "model": "run"}]
    text = tab.progress_html(events, "running", "runs/e")
    assert "3/4 pairs" in text and "1.50 pairs/s" in text and "samples" not in text
    assert "4/4 pairs" in tab.progress_html(events + [{"event": "done", "t": 3}], "done", "runs/e")
    scores = {"pairs": 4, "base_prefers_chosen": 0.25, "trained_prefers_chosen": 0.5, "margin_positive": 1.0, "mean_margin": 2.5}
    result = {"pairs": True, "models": prefscore.rows("run", scores)}
    frame = tab.metrics_frame(result)
    assert list(frame["model"]) == ["base", "run"] and list(frame["prefers_chosen"]) == [0.25, 0.5]
    assert list(frame.columns) == ["model", "pairs", "prefers_chosen", "margin_positive", "mean_margin"]
    note = tab.empty_note(result)
    for col in frame.columns[1:]:
        assert f"`{col}`" in note, col
    assert "not answered" in note and "max new tokens" in note
    assert "open an evaluation" in tab.empty_note(None)
