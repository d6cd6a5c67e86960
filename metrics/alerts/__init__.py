"""Alerting beyond the threshold rules: notifications (contact points, the outbox), silences, anomaly detection.

Kept free of imports so settings and models can use its pure helpers without
an import circle (metrics.models imports metrics.alerts.models at its end).
"""
