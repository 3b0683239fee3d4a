"""SAGE's tests. A package, so that pytest puts the repository root on sys.path rather than tests/ itself: the helper
module tests/tokenizers.py would otherwise shadow the Hugging Face `tokenizers` library."""
