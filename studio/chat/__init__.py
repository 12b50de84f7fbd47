"""Chat with a model."""
