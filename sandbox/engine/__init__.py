"""The experiment engine: runtime backends, the ServerApp, the ``run`` API, sweeps, recorder.

Above the core and the ``clients`` / ``strategies`` packages, whose public APIs it uses
(import-linter checks that it reaches into neither). Nothing here imports Flower,
torch or TensorFlow at module import; a run does.
"""
