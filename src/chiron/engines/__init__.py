"""chiron.engines."""
