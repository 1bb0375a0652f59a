"""Model runtimes behind one small protocol (filled in by the inference work)."""

__all__: list[str] = []
