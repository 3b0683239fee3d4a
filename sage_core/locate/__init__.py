"""Location search: attribution patching (AtP) over every component and role position, validated by real patching,
to find the cross-sections where the model reads each attribute.
"""
