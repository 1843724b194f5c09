"""hetdiff.data"""
