"""Demo data: a synthetic Dutch cosmetics retailer's exports, workspace file and ground truth."""

from cdp_ml.demo.generate import DemoResult, generate

__all__ = ["DemoResult", "generate"]
