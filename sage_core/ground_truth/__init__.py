"""Ground truth: cross-sections, the test sets built at them, the supervised dictionaries fitted there (one per
method) and their quality (sufficiency, necessity, edit accuracy).
"""
