"""The built-in tasks, one module each; each registers itself with `sage_core.prompts.library.register_task`, and
the library imports every module of this package, so adding a task is adding its module (and its tests)."""
