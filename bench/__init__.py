"""streamsolve benchmarks (not unit tests): each prints a table of ratios measured side by
side in one run. ``python -m bench`` runs them all in quick mode; ``--full`` for full sizes;
``--only throughput,memory,...`` for some. See BENCHMARKS.md for commands and figures."""
