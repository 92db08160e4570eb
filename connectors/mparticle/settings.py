"""Settings of the mParticle batch source: none yet (one JSON batch per input line)."""

from __future__ import annotations

from moerules.engine.rules.settings import ConnectorSettings

__all__ = ["MParticleSettings"]


class MParticleSettings(ConnectorSettings):
    """``source: {connector: mparticle}``: the source takes no settings."""
