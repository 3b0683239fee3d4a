"""Model and capture: the built-in transformer (definition, training, padding), its tokenizer, the forward pass that
records hook activations, device selection, and the remote-code rule for published models.
"""
