"""Loading models, the PEFT methods, and what a model or run folder holds."""
