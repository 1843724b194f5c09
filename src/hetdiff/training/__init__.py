"""hetdiff.training"""
