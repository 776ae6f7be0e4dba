"""Turn the ``picker`` config into a :class:`Plans` of built profiles, failing with named keys.

Every mistake is reported with the key's path and, for a name, the nearest valid one:
``picker.profiles.default[0].plugin: unknown plugin 'queue_scorer'; did you mean 'queue-scorer'?``
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pydantic

from pointsman.configfile import ConfigError
from pointsman_picker.config import PickerConfig, PoolConfig, ProfileEntry, SaturationConfig
from pointsman_picker.core.framework import Admitter, Filter, Picker, Scorer
from pointsman_picker.core.pipeline import PoolPlan, Profile, Saturation, WeightedScorer
from pointsman_picker.core.plugins.pickers import MaxScorePicker
from pointsman_picker.core.registry import REGISTRY

#: The default profile (llm-d's default weights): queue 2, KV cache 2, prefix cache 3.
DEFAULT_PROFILE: list[ProfileEntry | str] = [
    ProfileEntry(plugin="queue-scorer", weight=2),
    ProfileEntry(plugin="kv-cache-utilization-scorer", weight=2),
    ProfileEntry(plugin="prefix-cache-scorer", weight=3),
    "max-score-picker",
]

#: The ``slo`` profile: the default's scorers plus ``latency-scorer``: the endpoint with the most
#: predicted headroom under the request's SLO (or, without one or when none has headroom, the
#: fastest predicted) is preferred; nothing is filtered or refused. (A headroom filter in it
#: lost SLO attainment on the shared-prefix benchmark: with imperfect predictions it excluded
#: the endpoint holding the prompt's prefix; services/picker/README.md.)
SLO_PROFILE: list[ProfileEntry | str] = [
    ProfileEntry(plugin="latency-scorer", weight=2),
    *DEFAULT_PROFILE,
]
#: ``slo-strict``: only endpoints predicted to meet the SLO, and a request whose SLO none is
#: predicted to meet is refused (429, ``slo_unattainable``) rather than served late.
SLO_STRICT_PROFILE: list[ProfileEntry | str] = [
    "slo-admission",
    "slo-headroom-filter",
    *SLO_PROFILE,
]
#: The ``prefill`` profile: the default's scorers plus ``prefill-scorer`` (the endpoint where the
#: request's prefill would end soonest, by prompt work ahead of it and its own uncached tokens).
PREFILL_PROFILE: list[ProfileEntry | str] = [
    ProfileEntry(plugin="prefill-scorer", weight=4),
    *DEFAULT_PROFILE,
]
#: Profiles every picker has, under these names, unless the config defines the same name.
BUILTIN_PROFILES: dict[str, list[ProfileEntry | str]] = {
    "default": DEFAULT_PROFILE,
    "slo": SLO_PROFILE,
    "slo-strict": SLO_STRICT_PROFILE,
    "prefill": PREFILL_PROFILE,
}


class PluginConfigError(ConfigError):
    """A plugin, parameter or profile in the ``picker`` section is wrong."""


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Plans:
    profiles: dict[str, Profile]
    default: PoolPlan
    pools: dict[str, PoolPlan] = field(default_factory=dict)

    def for_pool(self, pool: str) -> PoolPlan:
        return self.pools.get(pool, self.default)


def _instantiate(type_name: str, params: dict[str, object], where: str) -> object:
    cls = REGISTRY.get(type_name)
    if cls is None:
        raise PluginConfigError(
            f"{where}: unknown plugin type '{type_name}'{_suggest(type_name, REGISTRY)}"
        )
    try:
        return pydantic.TypeAdapter(cls).validate_python(params)
    except pydantic.ValidationError as exc:
        fields = list(getattr(cls, "__dataclass_fields__", {}))
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(parameters)"
            hint = ""
            if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
                hint = _suggest(key, fields) or f" (parameters: {', '.join(fields) or 'none'})"
            lines.append(f"{where}.parameters.{key}: {err['msg']}{hint}")
        raise PluginConfigError("\n".join(lines)) from None


def _build_instances(cfg: PickerConfig) -> dict[str, object]:
    instances: dict[str, object] = {}
    for i, d in enumerate(cfg.plugins):
        where = f"picker.plugins[{i}]"
        name = d.name or d.type
        if name in instances:
            raise PluginConfigError(f"{where}.name: plugin name '{name}' is used twice")
        instances[name] = _instantiate(d.type, d.parameters, where)
    return instances


def _build_profile(
    name: str, entries: list[ProfileEntry | str], instances: dict[str, object]
) -> Profile:
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    pickers: list[Picker] = []
    admitters: list[Admitter] = []
    for i, raw in enumerate(entries):
        entry = ProfileEntry(plugin=raw) if isinstance(raw, str) else raw
        where = f"picker.profiles.{name}[{i}]"
        ref = entry.plugin
        if ref in instances:
            plugin = instances[ref]
        elif ref in REGISTRY:
            plugin = _instantiate(ref, {}, where)
        else:
            known = [*instances, *REGISTRY]
            raise PluginConfigError(f"{where}.plugin: unknown plugin '{ref}'{_suggest(ref, known)}")
        if isinstance(plugin, Scorer):
            scorers.append(
                WeightedScorer(ref, plugin, 1.0 if entry.weight is None else entry.weight)
            )
            continue
        if entry.weight is not None:
            raise PluginConfigError(f"{where}.weight: only scorers take a weight ('{ref}' is not)")
        if isinstance(plugin, Admitter):
            admitters.append(plugin)
        elif isinstance(plugin, Filter):
            filters.append(plugin)
        elif isinstance(plugin, Picker):
            pickers.append(plugin)
        else:  # pragma: no cover - every registered class is one of the three
            raise PluginConfigError(f"{where}.plugin: '{ref}' is not a filter, scorer or picker")
    if len(pickers) > 1:
        raise PluginConfigError(f"picker.profiles.{name}: more than one picker")
    picker = pickers[0] if pickers else MaxScorePicker()
    return Profile(name, tuple(filters), tuple(scorers), picker, admitters=tuple(admitters))


def _saturation(s: SaturationConfig) -> Saturation:
    return Saturation(
        s.queue_depth_threshold, s.kv_cache_util_threshold, s.max_in_flight, s.max_prefill_ms
    )


def build_plans(cfg: PickerConfig) -> Plans:
    instances = _build_instances(cfg)
    specs = {**BUILTIN_PROFILES, **cfg.profiles}
    profiles = {name: _build_profile(name, entries, instances) for name, entries in specs.items()}

    def profile(name: str, where: str) -> Profile:
        if name not in profiles:
            raise PluginConfigError(
                f"{where}: unknown profile '{name}'{_suggest(name, profiles)}"
                f" (profiles: {', '.join(profiles)})"
            )
        return profiles[name]

    def plan(pool: PoolConfig, where: str) -> PoolPlan:
        return PoolPlan(
            profile=profile(pool.profile or cfg.profile, f"{where}.profile"),
            prefill_profile=profile(
                pool.prefill_profile or cfg.prefill_profile, f"{where}.prefill_profile"
            ),
            saturation=_saturation(pool.saturation or cfg.saturation),
            stale_after_s=cfg.stale_after_ms / 1000.0,
            role_label=cfg.role_label,
            pd_threshold_bytes=(
                cfg.pd_threshold_bytes if pool.pd_threshold_bytes is None
                else pool.pd_threshold_bytes
            ),
        )  # fmt: skip

    default = plan(PoolConfig(), "picker")
    pools = {name: plan(p, f"picker.pools.{name}") for name, p in cfg.pools.items()}
    return Plans(profiles, default, pools)
