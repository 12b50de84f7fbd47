"""The export job."""
