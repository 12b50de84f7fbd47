"""The parent side: the command a job runs, its process tree, following it, the rules checked before it starts."""
