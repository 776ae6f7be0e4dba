"""Version 1 of the bus contracts: subjects and message schemas.

This package is the only coupling between Pointsman services. A breaking change to a message
means a new version package (``pointsman.v2``) with new subjects, so old and new replicas can run
side by side during a rollout. Adding an optional field with a default is not breaking.
"""

from pointsman.v1 import subjects
from pointsman.v1.messages import (
    CompletionEvent,
    EndpointMetrics,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    PickStatus,
    PoolInfo,
    PoolSnapshot,
    decode,
    encode,
)

__all__ = [
    "CompletionEvent",
    "EndpointMetrics",
    "ModelsReply",
    "ModelsRequest",
    "PickReply",
    "PickRequest",
    "PickStatus",
    "PoolInfo",
    "PoolSnapshot",
    "decode",
    "encode",
    "subjects",
]
