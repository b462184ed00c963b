"""Benchmarks that print performance figures; run each from the repository with ``python -m benchmarks.<name>``
(``make bench``). Their latest figures and how they were measured: benchmarks/README.md."""
