"""The one registry of metric kinds: everything Telemetry knows about latency, error_rate, throughput, cpu and memory.

Whatever depends on a metric type reads it here: the model choices,
validation (the valid range and unit), the default alert rules and the unit
in alert messages, the THRESHOLD_* settings, the dashboard's labels and
number formats (handed to charts.js as JSON, so a chart and a card print a
value alike), the OTLP unit conversions and the OpenAPI document. A new kind
is one more entry here. No Django imports: the settings module reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ABOVE = "above"
BELOW = "below"


@dataclass(frozen=True)
class Kind:
    name: str
    label: str
    unit: str  # what stored values are measured in, as validation messages name it
    minimum: float
    maximum: float | None  # None: unbounded
    # The default rule (AlertRule rows and THRESHOLD_<NAME>_<LEVEL> settings override it).
    warning: float
    critical: float
    direction: str  # ABOVE: alert when the value rises past the threshold; BELOW: when it drops under
    suffix: str  # after a number in alert messages: "api latency 812 ms above ..."
    additive: bool  # several services' values add up (throughput) rather than average (latency)
    # Display: value x scale, `decimals` places (`coarse_decimals` from `coarse_from` up), then display_suffix.
    display_suffix: str
    scale: float = 1.0
    decimals: int = 1
    coarse_decimals: int | None = None
    coarse_from: float = 0.0
    # OTLP unit -> factor into `unit`; None accepts any unit (a rate is per second whatever it counts).
    otlp_units: Mapping[str, float] | None = None
    # OTLP metric names read as this kind (TELEMETRY["OTLP_METRIC_MAP"] adds more), each with the unit
    # assumed when the metric declares none.
    otlp_names: Mapping[str, str] = field(default_factory=dict)

    def accepts(self, value: float) -> bool:
        return value >= self.minimum and (self.maximum is None or value <= self.maximum)

    def bounds_text(self) -> str:
        if self.maximum is None:
            return f">= {self.minimum:g}"
        return f"between {self.minimum:g} and {self.maximum:g}"

    def format(self, value: float | None) -> str:
        """The dashboard's spelling of a value: "1,234 ms", "0.50%", "1,200 req/s", "55.0%"."""
        if value is None:
            return "–"
        shown = value * self.scale
        decimals = self.decimals
        if self.coarse_decimals is not None and shown >= self.coarse_from:
            decimals = self.coarse_decimals
        return f"{shown:,.{decimals}f}{self.display_suffix}"

    def for_page(self) -> dict[str, Any]:
        """What charts.js needs to format like format() does."""
        return {
            "label": self.label,
            "scale": self.scale,
            "decimals": self.decimals,
            "coarse_decimals": self.coarse_decimals,
            "coarse_from": self.coarse_from,
            "suffix": self.display_suffix,
        }


PERCENT_UNITS = {"1": 100.0, "%": 1.0}

KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="latency",
            label="Latency",
            unit="ms",
            minimum=0.0,
            maximum=None,
            warning=500.0,
            critical=1000.0,
            direction=ABOVE,
            suffix=" ms",
            additive=False,
            display_suffix=" ms",
            coarse_decimals=0,
            coarse_from=10.0,
            otlp_units={"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "ns": 1e-6},
            otlp_names={
                "http.server.request.duration": "s",
                "http.server.duration": "ms",
                "rpc.server.duration": "ms",
                "latency": "ms",
            },
        ),
        Kind(
            name="error_rate",
            label="Error rate",
            unit="fraction 0-1",
            minimum=0.0,
            maximum=1.0,
            warning=0.05,
            critical=0.1,
            direction=ABOVE,
            suffix="",
            additive=False,
            display_suffix="%",
            scale=100.0,
            decimals=2,
            otlp_units={"1": 1.0, "%": 0.01},
            otlp_names={"error_rate": "1", "http.server.error_rate": "1"},
        ),
        Kind(
            name="throughput",
            label="Throughput",
            unit="req/s",
            minimum=0.0,
            maximum=None,
            warning=100.0,
            critical=50.0,
            direction=BELOW,
            suffix=" req/s",
            additive=True,
            display_suffix=" req/s",
            decimals=0,
            otlp_names={"throughput": "{request}/s", "http.server.requests": "{request}"},
        ),
        Kind(
            name="cpu",
            label="CPU",
            unit="%",
            minimum=0.0,
            maximum=100.0,
            warning=80.0,
            critical=95.0,
            direction=ABOVE,
            suffix="%",
            additive=False,
            display_suffix="%",
            otlp_units=PERCENT_UNITS,
            otlp_names={"system.cpu.utilization": "1", "process.cpu.utilization": "1", "cpu": "%"},
        ),
        Kind(
            name="memory",
            label="Memory",
            unit="%",
            minimum=0.0,
            maximum=100.0,
            warning=80.0,
            critical=95.0,
            direction=ABOVE,
            suffix="%",
            additive=False,
            display_suffix="%",
            otlp_units=PERCENT_UNITS,
            otlp_names={"system.memory.utilization": "1", "process.memory.utilization": "1", "memory": "%"},
        ),
    )
}
METRIC_TYPES: tuple[str, ...] = tuple(KINDS)
METRIC_TYPE_CHOICES = [(name, name) for name in METRIC_TYPES]


def for_page() -> dict[str, dict[str, Any]]:
    """Every kind's display rules, for the page (json_script "metric-kinds", read by charts.js)."""
    return {name: kind.for_page() for name, kind in KINDS.items()}
