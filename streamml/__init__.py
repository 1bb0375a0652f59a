"""streamml: windowed, stateful stream operators for machine learning on Bytewax.

The library side (everything that is not an operator) lives here: Kafka I/O,
serde, model runtimes, the embedded broker and the CLI. Operators are in
:mod:`streamml.operators`.
"""

from streamml.errors import Rejected

__all__ = ["Rejected", "__version__"]

__version__ = "0.1.0"
