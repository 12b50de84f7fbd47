"""Stage pt: continued pretraining on plain text, trained as sft is (studio/data/encode.py makes text rows)."""
from studio.train.stages.sft import STAGE  # noqa: F401
