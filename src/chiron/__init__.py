"""chiron: one self-verifying archive for air-gapped delivery of Python wheelhouses and images."""

__version__ = "0.1.0"
