"""The SAE zoo: which SAEs the built-in zoo trains (the plan), training them with SAELens, and the one view SAGE has
of any SAE (zoo-trained or published): loading checks, weight hashes, encode/decode.
"""
