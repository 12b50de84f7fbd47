"""Templates and loss masks: what the model sees, and which tokens carry the loss."""
import pytest
from transformers import AutoTokenizer

from studio import spec as specmod
from studio.data import encode
from studio.data.templates import BUILTINS, Template, TemplateError

CHAT = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Pico."},
        {"role": "user", "content": "Say it again."}, {"role": "assistant", "content": "Pico."}]


@pytest.fixture(scope="module")
def tok(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


def _trained_text(tok, ids, labels):
    return tok.decode([i for i, l in zip(ids, labels) if l != -100])


def test_alpaca_as_the_seeds_write_it(tok):
    t = Template("alpaca", tok)
    text = "".join(s for s, _ in t.segments(CHAT[:2]))
    assert text == ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                    "### Instruction:\nWho are you?\n\n### Response:\nI am Pico." + tok.eos_token + "\n\n")
    assert t.stop == tok.eos_token


def test_vicuna_and_chatml(tok):
    v = "".join(s for s, _ in Template("vicuna", tok).segments(CHAT[:2]))
    assert v.startswith("A chat between a curious user") and "### Human: Who are you?\n### ASSISTANT: I am Pico." in v
    c = Template("chatml", tok)
    assert "".join(s for s, _ in c.segments(CHAT[:2])) == "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Pico.<|im_end|>\n"
    assert c.stop == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") in c.stop_token_ids()


def test_auto_uses_the_tokenizer_template_and_masks_answers(tok):
    t = Template("auto", tok)
    text = "".join(s for s, _ in t.segments(CHAT))
    assert text == tok.apply_chat_template(CHAT, tokenize=False)
    ids, labels, cut = encode.encode_chat(CHAT, t, 1024)
    assert not cut
    assert _trained_text(tok, ids, labels) == "I am Pico.<|im_end|>\nPico.<|im_end|>\n"
    ids, labels, _ = encode.encode_chat(CHAT, t, 1024, mask_history=True)
    assert _trained_text(tok, ids, labels) == "Pico.<|im_end|>\n"
    ids, labels, _ = encode.encode_chat(CHAT, t, 1024, train_on_prompt=True)
    assert labels == ids


@pytest.mark.parametrize("name", list(BUILTINS))
def test_builtin_jinja_renders_like_training(tok, name):
    t = Template(name, tok)
    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.chat_template = t.chat_template()
    for msgs in (CHAT, [{"role": "system", "content": "Be brief."}] + CHAT):
        assert tok2.apply_chat_template(msgs, tokenize=False) == "".join(s for s, _ in t.segments(msgs))
    assert tok2.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True) == t.prompt(CHAT[:1])


def test_auto_without_chat_template_names_builtins(tok):
    bare = AutoTokenizer.from_pretrained(tok.name_or_path)
    bare.chat_template = None
    with pytest.raises(TemplateError, match="alpaca, vicuna, chatml, default"):
        Template("auto", bare)


def test_truncation_and_no_trainable_tokens_reported(tok, data_dir):
    t = Template("auto", tok)
    spec = specmod.load(None, [f"data.dataset_dir={data_dir}", "data.cutoff_len=20"])
    from studio.data.registry import DataError

    with pytest.raises(DataError, match=r"no trainable tokens.*cut by data.cutoff_len=20"):
        encode.encode_names(spec, ["identity"], tok, t, use_cache=False)


def test_pt_blocks_cover_the_text(tok, data_dir):
    t = Template("auto", tok)
    spec = specmod.load(None, [f"data.dataset_dir={data_dir}", "data.cutoff_len=64", "method.stage=pt", "data.dataset=[pretrain_demo]"])
    ds, rep = encode.encode_names(spec, ["pretrain_demo"], tok, t, use_cache=False)
    assert rep.examples == len(ds) > 3 and all(len(r) <= 64 for r in ds["input_ids"])
    assert all(r["labels"] == r["input_ids"] for r in ds)
    assert "Low-rank adaptation" in tok.decode(sum(ds["input_ids"], []))


def test_encoding_is_cached(tok, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    t = Template("auto", tok)
    spec = specmod.load(None, [f"data.dataset_dir={data_dir}"])
    ds1, rep1 = encode.encode_names(spec, ["identity"], tok, t)
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 1
    ds2, rep2 = encode.encode_names(spec, ["identity"], tok, t)
    assert ds2["input_ids"] == ds1["input_ids"] and rep2 == rep1
    # an edited file is a new cache entry
    (data_dir / "identity.json").write_text((data_dir / "identity.json").read_text().replace("Pico", "Nano"))
    ds3, _ = encode.encode_names(spec, ["identity"], tok, t)
    assert ds3["input_ids"] != ds1["input_ids"]
