"""hetdiff.experts"""
