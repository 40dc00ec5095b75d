"""Expert Router harness: gateway, classifier, engines, simulator and telemetry."""

__version__ = "0.1.0"
