"""The speed benchmark behind benchmarks/RESULTS.md, one job per module:

- inputs:          the photos, their crops, and seeded random weights with BatchNorm calibrated on them
- torch_reference: geffnet's model (the card's original PyTorch code), measured in fresh processes
- configurations:  what each row of the table measures (engine, precision, settings, unit of work)
- runner:          interleaved rounds, waiting for a quiet CPU, rounds beside a busy process
- layer_profile:   OpenVINO's per-layer profile, one core's GEMM rate, the network's MACs
- agreement:       top-1 agreement of bf16 and int8 with fp32
- report:          RESULTS.md

`run_benchmarks.py` beside this package is the entry point; everything here receives the ResolvedModel.
"""
