"""`studio serve`: an OpenAI-compatible API for a base model and several adapters (see docs/serve.md)."""
