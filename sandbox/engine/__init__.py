"""The experiment engine: runtime backends, the ServerApp, the ``run`` API, sweeps, recorder.

Above the core and the ``clients`` / ``strategies`` packages, whose public APIs it uses
(import-linter checks that it reaches into neither). Importing the engine's entry points
(``api``, ``preflight``, ``sweep``) imports no Flower, torch or TensorFlow; starting a
run imports the runtime, the ServerApp and the framework it needs.
"""
