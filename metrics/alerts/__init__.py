"""Alerting beyond thresholds: notifications, silences and anomaly detection."""
