"""Length-grouped batches that are the same for any number of processes.

transformers' `group_by_length` groups by the per-device batch and draws from the global random generator, so
2 processes x batch 2 would see other examples per optimizer step than 1 process x batch 4. Here the groups are
cut for the global batch (per device x accumulation x processes) from a generator seeded with the data seed:
accelerate then hands each process its share of every global batch, and a resumed run skips exactly the
batches it already trained on.
"""
from __future__ import annotations


def sampler(trainer, train_dataset=None):
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    args = trainer.args
    ds = train_dataset if train_dataset is not None else trainer.train_dataset
    seed = args.data_seed if args.data_seed is not None else args.seed
    return LengthGroupedSampler(args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size),
                                dataset=ds, model_input_name="input_ids", generator=torch.Generator().manual_seed(seed))


def use_global_groups(trainer) -> None:
    trainer._get_train_sampler = lambda train_dataset=None: sampler(trainer, train_dataset)
