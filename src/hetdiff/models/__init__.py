"""hetdiff.models"""
