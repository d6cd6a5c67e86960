"""HTTP: the ingest ASGI app (JSON and OTLP), the query, alert and health views, errors, authentication and exports."""
