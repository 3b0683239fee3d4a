"""SAGE's method, pure: torch/numpy/polars in, torch/numpy/polars out; no Prefect, no files.

One subpackage per stage of the pipeline, in the order a run takes them:
prompts (tasks and prompts) -> model (the model and activation capture) -> zoo (SAE training and the SAE view) ->
locate (location search) -> ground_truth (dictionaries and their quality) -> scoring (metrics and the leaderboard).
`config` holds the typed configuration every stage reads.
"""
