"""The vLLM simulator: upstream model servers for tests, the benchmark and `llmp gateway --demo`."""

from gateway.sim.server import FAULTS, SimServer, SimSettings, SimStats, Simulator

__all__ = ["FAULTS", "SimServer", "SimSettings", "SimStats", "Simulator"]
