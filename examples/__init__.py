"""Runnable example dataflows; users of the library, never imported by it."""
