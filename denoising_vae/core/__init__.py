"""The base layer: constants, argument checks, atomic files and JSON, cache folders, starting TensorFlow.

Standard library and numpy only; every other layer builds on it, and it
imports none of them.
"""
