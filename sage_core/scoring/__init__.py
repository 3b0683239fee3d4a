"""Scoring: an SAE's codes at a cross-section (native or mapped through residual SAEs), every metric against the
ground truth, the controls, core metrics on background text, and the leaderboard built from the score rows.
"""
