"""The one place that touches Captum's private helpers.

Captum keeps its formatting and target-selection helpers under underscored modules whose
signatures change between releases (see ``reference/captum_integration.md`` §3). Every other
module of :mod:`dnnbrain_captum` imports them from here, so a Captum upgrade touches one file.
"""

from __future__ import annotations

from captum._utils.common import (
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
    _select_targets,
)
from captum._utils.typing import BaselineType, TargetType

__all__ = [
    "BaselineType",
    "TargetType",
    "format_output",
    "format_tensor_into_tuples",
    "is_tuple",
    "select_targets",
]

format_output = _format_output
format_tensor_into_tuples = _format_tensor_into_tuples
is_tuple = _is_tuple
select_targets = _select_targets
