"""hetdiff.objectives"""
