"""Plugin type names (as in the llm-d scheduler, where the behaviour is the same) -> classes.

Adding a plugin: write its module under ``plugins/`` and add one line here.
"""

from __future__ import annotations

from pointsman_picker.core.plugins.filters import HealthFilter, LabelFilter, StalenessFilter
from pointsman_picker.core.plugins.latency import (
    LatencyScorer,
    PrefillScorer,
    SloAdmission,
    SloHeadroomFilter,
)
from pointsman_picker.core.plugins.load import (
    KVCacheUtilizationScorer,
    QueueScorer,
    RunningRequestsSizeScorer,
)
from pointsman_picker.core.plugins.lora import LoraAffinityScorer
from pointsman_picker.core.plugins.pickers import MaxScorePicker, RandomPicker, WeightedRandomPicker
from pointsman_picker.core.plugins.prefix_cache import PrefixCacheScorer
from pointsman_picker.core.plugins.session import SessionAffinityScorer

REGISTRY: dict[str, type] = {
    "health-filter": HealthFilter,
    "staleness-filter": StalenessFilter,
    "label-filter": LabelFilter,
    "queue-scorer": QueueScorer,
    "kv-cache-utilization-scorer": KVCacheUtilizationScorer,
    "running-requests-size-scorer": RunningRequestsSizeScorer,
    "prefix-cache-scorer": PrefixCacheScorer,
    "lora-affinity-scorer": LoraAffinityScorer,
    "session-affinity-scorer": SessionAffinityScorer,
    "max-score-picker": MaxScorePicker,
    "random-picker": RandomPicker,
    "weighted-random-picker": WeightedRandomPicker,
    "latency-scorer": LatencyScorer,
    "slo-headroom-filter": SloHeadroomFilter,
    "slo-admission": SloAdmission,
    "prefill-scorer": PrefillScorer,
}
