"""Tests against a real SLURM scheduler that the tests start themselves (see slurm.py).

A package, so that its conftest.py does not take the place of tests/conftest.py as the
module `conftest` that the other test modules import from."""
