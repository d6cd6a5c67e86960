"""Live streaming: publishing after commit, the per-process fan-out, the /ws/metrics protocol and consumer."""
