"""chiron.core."""
