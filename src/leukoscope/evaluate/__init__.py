"""Metrics, calibration and evaluation reports."""
