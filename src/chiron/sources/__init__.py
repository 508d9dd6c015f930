"""chiron.sources."""
