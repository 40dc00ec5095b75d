"""Calibration of sim profiles against measured engines: replay, fitting, leave-one-out validation."""
