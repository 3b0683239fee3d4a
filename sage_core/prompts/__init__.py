"""Tasks and prompts: the task definitions (templates, attributes, roles), the built-in task library, prompt
generation with counterfactual pairs, and the background corpus the built-in model is trained on.
"""
