"""streamml benchmarks: every subject measured next to its baseline in the same process.

Run all with ``python -m benchmarks`` (``make bench``), one family with
``python -m benchmarks.<family>``.
"""
