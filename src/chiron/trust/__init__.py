"""chiron.trust."""
