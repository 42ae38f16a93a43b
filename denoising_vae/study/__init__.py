"""The study layer: configuration and command line, the run folder, one model's train-evaluate-save,
the single study, sweeps on Dask, figures and the report.

Importing it does not start TensorFlow; running a study does.
"""
