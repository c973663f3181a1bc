"""cdp-ml: a predictive-audience workspace for a Customer Data Platform.

Stages, in data-flow order: ``sources`` (ingest) -> ``identity`` (persons) -> ``features`` ->
``models`` (conversion intent, repurchase timing) -> ``segments`` (activation, report) -> ``privacy``.
Each stage is a plain function of a :class:`Workspace` and an as-of date.
"""

from cdp_ml.errors import CdpError
from cdp_ml.workspace import Workspace

__all__ = ["CdpError", "Workspace"]
__version__ = "0.1.0"
