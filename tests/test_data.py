"""Dataset registry, readers and conversion: real files, every bad record reported with its location."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA
from studio.data import check, encode, registry
from studio.data.registry import DataError


def _register(d, name, file_name, content, **entry):
    (d / file_name).write_text(content)
    info = json.loads((d / "dataset_info.json").read_text())
    info[name] = {"file_name": file_name, **entry}
    (d / "dataset_info.json").write_text(json.dumps(info))


def _issues(d, name, stage="sft"):
    r = check.check_one(d, name, stage)
    return "\n".join(r.issues)


def test_project_registry_entries_all_pass():
    results = check.check(ROOT / "data")
    assert results and all(r.ok for r in results), [(r.name, r.issues) for r in results if not r.ok]
    kinds = {r.name: r.kind for r in results}
    assert kinds["identity"] == "chat" and kinds["chat_demo"] == "chat" and kinds["pretrain_demo"] == "text"


def test_malformed_json_names_line_and_column(data_dir):
    _register(data_dir, "broken", "broken.json", '[\n  {"instruction": "hi", "output": "yo"},\n  {"instruction": oops}\n]')
    msg = _issues(data_dir, "broken")
    assert "broken.json" in msg and "line 3" in msg and "invalid JSON" in msg


def test_bad_jsonl_lines_each_reported(data_dir):
    lines = ['{"instruction": "a", "output": "b"}', "{not json", '{"instruction": "c", "output": "d"}', "[1, 2]"]
    _register(data_dir, "lines", "lines.jsonl", "\n".join(lines) + "\n")
    msg = _issues(data_dir, "lines")
    assert "lines.jsonl:2: invalid JSON line" in msg and "lines.jsonl:4: expected an object" in msg


def test_missing_column_names_record_and_column(data_dir):
    _register(data_dir, "cols", "cols.json", json.dumps([{"instruction": "a", "output": "b"}, {"question": "q", "answer": "a"}]))
    msg = _issues(data_dir, "cols")
    assert "cols.json record 1" in msg and "missing column `instruction`" in msg


def test_unknown_formatting_and_missing_file(data_dir):
    _register(data_dir, "fmt", "fmt.json", "[]", formatting="openai")
    assert "unknown formatting `openai`" in _issues(data_dir, "fmt")
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["ghost"] = {"file_name": "ghost.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    assert "ghost.json not found" in _issues(data_dir, "ghost")


def test_empty_file(data_dir):
    _register(data_dir, "empty", "empty.json", "")
    assert "empty" in _issues(data_dir, "empty")


def test_sharegpt_role_order(data_dir):
    conv = [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}]
    _register(data_dir, "order", "order.json", json.dumps(conv), formatting="sharegpt", columns={"messages": "conversations"})
    msg = _issues(data_dir, "order")
    assert "order.json record 0" in msg and "turn 1" in msg and "wrong role order" in msg


def test_openai_style_messages_are_sharegpt_with_tags(data_dir):
    conv = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    _register(data_dir, "oai", "oai.json", json.dumps(conv), formatting="sharegpt", columns={"messages": "messages"},
              tags={"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"})
    examples, issues = encode.read_examples(data_dir, "oai", "sft")
    assert not issues
    assert examples[0][1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_unknown_dataset_lists_close_matches(data_dir):
    with pytest.raises(DataError, match=r"unknown dataset `identiti`.*Did you mean: identity"):
        registry.entry(data_dir, "identiti")


def test_paths_stay_inside_the_dataset_folder(data_dir, tmp_path):
    (tmp_path / "secret.json").write_text("[]")
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["escape"] = {"file_name": "../secret.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="outside the dataset folder"):
        registry.entry(data_dir, "escape")


def test_csv_parquet_and_folder_files(data_dir):
    import datasets

    _register(data_dir, "csvset", "set.csv", "instruction,input,output\nSay hi,,hi\nAdd,1 and 2,3\n")
    ex, issues = encode.read_examples(data_dir, "csvset", "sft")
    assert not issues and ex[1][1][-2]["content"] == "Add\n1 and 2" and ex[1][0].endswith("set.csv:3")
    sub = data_dir / "folder"
    sub.mkdir()
    datasets.Dataset.from_dict({"instruction": ["a", "b"], "output": ["x", "y"]}).to_parquet(str(sub / "part.parquet"))
    (sub / "more.jsonl").write_text('{"instruction": "c", "output": "z"}\n')
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["folder"] = {"file_name": "folder"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    ex, issues = encode.read_examples(data_dir, "folder", "sft")
    assert not issues and len(ex) == 3


def test_preference_data_refused_by_sft_with_reason(data_dir):
    pairs = [{"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}]
    _register(data_dir, "prefs", "prefs.json", json.dumps(pairs), formatting="sharegpt", ranking=True,
              columns={"messages": "conversations", "chosen": "chosen", "rejected": "rejected"})
    assert check.check_one(data_dir, "prefs").ok  # a well-formed preference set
    msg = _issues(data_dir, "prefs", "sft")
    assert "preference data" in msg and "DPO" in msg


def test_plain_text_refused_by_sft_and_used_by_pt(data_dir):
    assert "method.stage=pt" in _issues(data_dir, "pretrain_demo", "sft")
    ex, issues = encode.read_examples(data_dir, "pretrain_demo", "pt")
    assert not issues and all(isinstance(t, str) for _, t in ex)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="reference data not present")
def test_llamafactory_registry_loads_unchanged():
    results = {r.name: r for r in check.check(SHARED_DATA)}
    for name in ("identity", "alpaca_en_demo", "alpaca_zh_demo", "glaive_toolcall_en_demo", "wiki_demo", "c4_demo", "dpo_en_demo", "kto_en_demo"):
        assert results[name].ok, (name, results[name].issues[:3])
    assert results["dpo_en_demo"].kind == "ranking" and results["kto_en_demo"].kind == "kto"
    for name in ("dpo_en_demo", "kto_en_demo"):
        assert not check.check_one(SHARED_DATA, name, "sft").ok
    ex, _ = encode.read_examples(SHARED_DATA, "glaive_toolcall_en_demo", "sft", max_samples=5)
    roles = {m["role"] for _, msgs in ex for m in msgs}
    assert {"system", "user", "assistant", "tool"} <= roles  # tools prompt, observations


def test_cli_data_check_reports_without_traceback(data_dir):
    _register(data_dir, "bad", "bad.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n')
    r = subprocess.run([sys.executable, "-m", "studio", "data", "check", "--dataset-dir", str(data_dir), "--no-tokenize", "identity", "bad"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1
    assert "bad.jsonl:2: invalid JSON line" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "studio", "data", "check", "--dataset-dir", str(data_dir), "--no-tokenize", "identity"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "1 ok, 0 with problems" in r.stdout
