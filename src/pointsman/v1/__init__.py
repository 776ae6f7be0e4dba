"""Version 1 of the bus contracts: routes (:mod:`pointsman.v1.routes`), subjects, message schemas.

This package is the only coupling between Pointsman services. A breaking change to a message
means a new version package (``pointsman.v2``) with new subjects, so old and new replicas can run
side by side during a rollout. Adding an optional field with a default is not breaking.
"""

from pointsman.v1 import subjects
from pointsman.v1.messages import (
    CollectorAnnounce,
    CompletionEvent,
    EndpointMetrics,
    ModelCandidate,
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
    "CollectorAnnounce",
    "CompletionEvent",
    "EndpointMetrics",
    "ModelCandidate",
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
