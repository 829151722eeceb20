"""Tools: profilers, calibration, validation, benchmarks, the decode check harness.

Run as `python -m adrenaline_sgl.tools.<name>`. Runtime packages import nothing from here."""
