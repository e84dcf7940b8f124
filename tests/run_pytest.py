"""Runs one test file under pytest (the `main` of Bazel's py_test targets)."""

import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(["-q", *sys.argv[1:]]))
