"""Data generation as a job: self-instruct from seed tasks, or a teacher's answers (see docs/generate.md)."""
