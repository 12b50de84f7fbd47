"""The evaluate & predict job."""
