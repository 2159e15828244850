"""Test support: real servers in background threads."""
