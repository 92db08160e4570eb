"""Local emulators of the partner ingestion APIs, for integration tests and `moerules emulate`."""

from __future__ import annotations

from collections.abc import Callable

from moerules.connectors.amplitude.emulator import AmplitudeEmulator
from moerules.connectors.emulation.base import Emulator, Received
from moerules.connectors.emulation.faults import Fault, FaultPlan, RateLimit
from moerules.connectors.emulation.server import run_forever, serve
from moerules.connectors.mixpanel.emulator import MixpanelEmulator
from moerules.connectors.moengage.emulator import MoEngageEmulator
from moerules.connectors.segment.emulator import SegmentEmulator

EMULATORS: dict[str, Callable[..., Emulator]] = {
    "moengage": MoEngageEmulator,
    "amplitude": AmplitudeEmulator,
    "segment": SegmentEmulator,
    "mixpanel": MixpanelEmulator,
}

__all__ = [
    "EMULATORS",
    "AmplitudeEmulator",
    "Emulator",
    "Fault",
    "FaultPlan",
    "MixpanelEmulator",
    "MoEngageEmulator",
    "RateLimit",
    "Received",
    "SegmentEmulator",
    "run_forever",
    "serve",
]
