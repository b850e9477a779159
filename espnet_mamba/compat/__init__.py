"""Fixes applied to ESPnet at import time (see registry.py: POST_IMPORT)."""
