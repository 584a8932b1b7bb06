"""Helpers shared by the tests (a package, so no test module imports another)."""
