"""studio: a browser-based fine-tuning studio for large language models."""
import logging

__version__ = "0.1.0"

# On a CPU with AVX-512 bf16, importing bitsandbytes warns that the optional `kernels` package is missing, in every
# job log, quantized or not; its own fallback kernel is what runs. Real errors still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
