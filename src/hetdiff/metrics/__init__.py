"""hetdiff.metrics"""
