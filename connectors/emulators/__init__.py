"""Local emulators of the partner ingestion APIs, for integration tests and `moerules emulate`."""

from __future__ import annotations

from collections.abc import Callable

from connectors.emulators.amplitude import AmplitudeEmulator
from connectors.emulators.base import Emulator, Received
from connectors.emulators.faults import Fault, FaultPlan, RateLimit
from connectors.emulators.mixpanel import MixpanelEmulator
from connectors.emulators.moengage import MoEngageEmulator
from connectors.emulators.segment import SegmentEmulator
from connectors.emulators.server import run_forever, serve

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
