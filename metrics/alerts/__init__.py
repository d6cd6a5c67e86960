"""Alerts that reach people: contact points, the notification outbox, silences.

Kept free of imports so settings and models can use its pure helpers without
an import circle (metrics.models imports metrics.alerts.models at its end).
"""
