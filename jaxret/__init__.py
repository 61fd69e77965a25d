"""jaxret: neural retrieval on accelerators in JAX/Flax."""

from jaxret.errors import JaxretError, DataError, ConfigError

__all__ = ["JaxretError", "DataError", "ConfigError"]
__version__ = "0.1.0"
