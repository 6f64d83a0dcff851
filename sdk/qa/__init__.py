"""The parity and benchmark harness: reference outputs, parity checks and localisation,
benchmarks, the matrix, reports. The sdk core never imports it."""
