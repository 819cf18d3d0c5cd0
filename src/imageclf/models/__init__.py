"""Model code shared by workers, benchmarks and tests; HTTP stays out of it.

`registry` and `images` import no TensorFlow (the API uses them); `keras_model` does
and is imported only by workers, benchmarks and tests.
"""
