"""Packing: several examples in one row, and none of them can attend to another."""


def test_packed_row_equals_separate_forwards(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    torch.manual_seed(0)
    a, b, c = (torch.randint(10, 1000, (n,)).tolist() for n in (7, 12, 5))
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([{"input_ids": x, "labels": x} for x in (a, b, c)])
    assert batch["input_ids"].shape == (1, 24) and "attention_mask" not in batch
    with torch.no_grad():  # use_cache=False as in training (TRL's compute_loss): boundaries come from position_ids
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for x in (a, b, c):
            alone = model(input_ids=torch.tensor([x])).logits[0]
            assert torch.allclose(packed[start:start + len(x)], alone, atol=1e-4), "an example attended across a boundary"
            start += len(x)
    labels = batch["labels"][0]
    assert labels[0] == -100 and labels[7] == -100 and labels[19] == -100  # no loss across a boundary
