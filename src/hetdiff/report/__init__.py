"""hetdiff.report"""
