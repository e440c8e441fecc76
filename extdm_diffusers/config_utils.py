"""Merging nested configuration dicts (model defaults, the benchmark registry, ``--model_config`` overrides)."""

from __future__ import annotations

import copy
from typing import Any, Dict, Optional


def deep_merge(base: Dict[str, Any], overrides: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``overrides`` merged into a deep copy of ``base``: nested dicts merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
