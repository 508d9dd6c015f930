"""chiron.archive."""
