"""Launchers for the real servers the tests and the demo use (Infinity, SeaweedFS) and test doubles."""
