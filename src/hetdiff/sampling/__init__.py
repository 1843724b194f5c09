"""hetdiff.sampling"""
