"""charlm benchmarks: ``python -m benchmarks`` (full) or ``python -m benchmarks --quick`` (CI).

Every speed is stated next to a reference measured in the same run on the same machine
(a plain PyTorch loop, sgemm FLOP/s, memory-copy bandwidth), and references and subjects are
measured alternately, so the ratios mean something on a shared, noisy machine. Results and the
exact command are recorded in ``BENCHMARKS.md``.
"""
