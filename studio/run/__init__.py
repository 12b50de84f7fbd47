"""The run-folder protocol, shared by the parent and the child side."""
