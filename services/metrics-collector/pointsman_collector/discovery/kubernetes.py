"""Kubernetes discovery: ready pods picked by a label selector or by an InferencePool.

Uses ``kubernetes-asyncio`` (list, then watch from the list's resourceVersion; on a closed or
broken watch, watch again from the last version; on an error such as 410 Gone, list again after
``retry_s``). An ``InferencePool`` (``inference.networking.k8s.io/v1``) is watched too: its
``spec.selector.matchLabels`` chooses the pods and ``spec.targetPorts[].number`` the ports, and
a change to either restarts the pod watch with the new selector.

Only pods that are Running, Ready, have an IP and are not being deleted become endpoints, like
the endpoint picker of the Gateway API Inference Extension does.

With ``kubernetes.policy.enabled`` the same client lists and watches the Inference Extension's
InferenceObjectives and InferenceModelRewrites (``inference.networking.x-k8s.io/v1alpha2``) the
same way, and hands the policy they make (:mod:`pointsman_collector.core.policy`) to
``on_policy`` on every change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch

from pointsman.runtime import cancel_and_wait, retry
from pointsman.v1.policy import InferencePolicy
from pointsman_collector.config import KubernetesConfig, KubernetesSource
from pointsman_collector.core import policy as policy_core
from pointsman_collector.core.endpoints import Endpoint
from pointsman_collector.discovery import Report

log = logging.getLogger(__name__)

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
PLURAL = "inferencepools"
WATCH_SECONDS = 240
#: The Inference Extension's experimental group: InferenceObjective, InferenceModelRewrite.
X_GROUP = "inference.networking.x-k8s.io"
X_VERSION = "v1alpha2"
OBJECTIVES = "inferenceobjectives"
REWRITES = "inferencemodelrewrites"


def pod_ready(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return False
    if status.get("phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def pod_endpoints(
    pod: Mapping[str, Any], source: KubernetesSource, ports: list[int]
) -> list[Endpoint]:
    """The endpoints one pod gives (one per target port); none unless it is ready."""
    if not pod_ready(pod):
        return []
    meta = pod.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    labels["pod"] = str(meta.get("name", ""))
    ip = pod["status"]["podIP"]
    host = f"[{ip}]" if ":" in ip else ip
    engine = source.engine or labels.get("pointsman.io/engine") or None
    return [Endpoint(source.pool, f"{host}:{port}", labels, engine) for port in ports]


def pool_selector(obj: Mapping[str, Any]) -> tuple[str, list[int]]:
    """An InferencePool's label selector (``k=v,...``) and target ports."""
    spec = obj.get("spec") or {}
    selector = spec.get("selector") or {}
    # v1 nests the labels under matchLabels; the alpha API had them at the top level.
    match = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    ports = [int(p["number"]) for p in spec.get("targetPorts") or [] if "number" in p]
    if not ports and spec.get("targetPortNumber"):
        ports = [int(spec["targetPortNumber"])]
    sel = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
    return sel, ports


class _SourceWatch:
    """The pods of one configured source, kept current."""

    def __init__(
        self,
        api: client.ApiClient,
        source: KubernetesSource,
        retry_s: float,
        changed: asyncio.Event,
    ) -> None:
        self.api = api
        self.source = source
        self.retry_s = retry_s
        self.changed = changed
        self.pods: dict[str, list[Endpoint]] = {}
        self._current: tuple[str, list[int]] | None = None
        self._pods_task: asyncio.Task[None] | None = None
        self.name = (
            f"{source.namespace}/inferencepool/{source.inference_pool}"
            if source.inference_pool
            else f"{source.namespace}/pods/{source.selector}"
        )

    def endpoints(self) -> list[Endpoint]:
        return [ep for eps in self.pods.values() for ep in eps]

    def _set_pods(self, pods: dict[str, list[Endpoint]]) -> None:
        self.pods = pods
        self.changed.set()

    async def run(self) -> None:
        if self.source.selector is not None:
            assert self.source.port is not None
            await self._watch_pods(self.source.selector, [self.source.port])
        else:
            await self._follow_pool()

    async def _apply_pool(self, obj: Mapping[str, Any] | None) -> None:
        """Restart the pod watch when the InferencePool's selector or ports change."""
        wanted = pool_selector(obj) if obj is not None else None
        if wanted == self._current:
            return
        if self._pods_task is not None:
            await cancel_and_wait([self._pods_task])
            self._pods_task = None
        self._current = wanted
        self._set_pods({})
        if wanted is None:
            log.warning("InferencePool %s not found", self.name)
        else:
            log.info("InferencePool %s selects %r ports %s", self.name, wanted[0], wanted[1])
            self._pods_task = asyncio.create_task(self._watch_pods(*wanted))

    async def _follow_pool(self) -> None:
        try:
            await retry(f"watch of {self.name}", self._follow_pool_once, delay=self.retry_s)
        finally:
            if self._pods_task is not None:
                await cancel_and_wait([self._pods_task])

    async def _follow_pool_once(self) -> None:
        """List the InferencePool, then watch it from that version, until the watch fails."""
        custom = client.CustomObjectsApi(self.api)
        src = self.source
        by_name = f"metadata.name={src.inference_pool}"
        listed: Any = await custom.list_namespaced_custom_object(
            GROUP, VERSION, src.namespace, PLURAL, field_selector=by_name
        )
        items = listed.get("items") or []
        rv = (listed.get("metadata") or {}).get("resourceVersion")
        await self._apply_pool(items[0] if items else None)

        async def changed(kind: str, obj: dict[str, Any]) -> None:
            await self._apply_pool(None if kind == "DELETED" else obj)

        await _watch_from(
            rv,
            changed,
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            src.namespace,
            PLURAL,
            field_selector=by_name,
        )

    async def _watch_pods(self, selector: str, ports: list[int]) -> None:
        await retry(
            f"pod watch {self.name}",
            lambda: self._watch_pods_once(selector, ports),
            delay=self.retry_s,
        )

    async def _watch_pods_once(self, selector: str, ports: list[int]) -> None:
        """List the selected pods, then watch them from that version, until the watch fails."""
        core = client.CoreV1Api(self.api)
        ns = self.source.namespace
        listed: Any = await core.list_namespaced_pod(
            ns, label_selector=selector, _preload_content=False
        )
        body = await listed.json()
        pods = {
            p["metadata"]["name"]: pod_endpoints(p, self.source, ports)
            for p in body.get("items") or []
        }
        self._set_pods(pods)
        rv = (body.get("metadata") or {}).get("resourceVersion")

        async def changed(kind: str, obj: dict[str, Any]) -> None:
            name = (obj.get("metadata") or {}).get("name", "")
            pods = dict(self.pods)
            if kind == "DELETED":
                pods.pop(name, None)
            else:
                pods[name] = pod_endpoints(obj, self.source, ports)
            if pods != self.pods:
                self._set_pods(pods)

        await _watch_from(rv, changed, core.list_namespaced_pod, ns, label_selector=selector)


async def _watch_from(
    rv: str | None,
    changed: Callable[[str, dict[str, Any]], Awaitable[None]],
    list_call: Any,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Watch ``list_call(*args, **kwargs)`` from resource version ``rv``, handing each change
    (``ADDED``/``MODIFIED``/``DELETED`` and the object) to ``changed``. Watches time out and are
    resumed from the last version seen; an ``ERROR`` event (410 Gone, ...) raises, so the caller
    lists again."""
    while True:
        w = watch.Watch()
        async with w.stream(
            list_call, *args, resource_version=rv, timeout_seconds=WATCH_SECONDS, **kwargs
        ) as stream:
            async for event in stream:
                obj = event["raw_object"]
                kind = event["type"]
                if kind == "ERROR":
                    raise RuntimeError(str(obj.get("message", obj)))
                rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                if kind != "BOOKMARK":
                    await changed(kind, obj)


class _PolicyWatch:
    """InferenceObjectives and InferenceModelRewrites of one namespace, kept current: each kind
    is listed, then watched from the list's version; a failed watch (410 Gone, ...) lists again
    after ``retry_s``. Objects that do not have their CRD's shape are logged and left out."""

    def __init__(
        self,
        api: client.ApiClient,
        cfg: KubernetesConfig,
        on_policy: Callable[[InferencePolicy], None],
    ) -> None:
        self.api = api
        self.namespace = cfg.policy.namespace
        self.retry_s = cfg.retry_s
        self.on_policy = on_policy
        self.pools = {s.inference_pool: s.pool for s in cfg.sources if s.inference_pool}
        self.objects: dict[str, dict[str, dict[str, Any]]] = {OBJECTIVES: {}, REWRITES: {}}
        self.listed: set[str] = set()
        self._last: InferencePolicy | None = None

    async def run(self) -> None:
        await asyncio.gather(self._follow(OBJECTIVES), self._follow(REWRITES))

    async def _follow(self, plural: str) -> None:
        await retry(
            f"watch of {self.namespace}/{plural}",
            lambda: self._follow_once(plural),
            delay=self.retry_s,
        )

    async def _follow_once(self, plural: str) -> None:
        custom = client.CustomObjectsApi(self.api)
        listed: Any = await custom.list_namespaced_custom_object(
            X_GROUP, X_VERSION, self.namespace, plural
        )
        self.objects[plural] = {
            _object_name(o): o for o in listed.get("items") or [] if _object_name(o)
        }
        self.listed.add(plural)
        self._changed()
        rv = (listed.get("metadata") or {}).get("resourceVersion")

        async def changed(kind: str, obj: dict[str, Any]) -> None:
            name = _object_name(obj)
            if kind == "DELETED":
                self.objects[plural].pop(name, None)
            elif name:
                self.objects[plural][name] = obj
            self._changed()

        await _watch_from(
            rv, changed, custom.list_namespaced_custom_object, X_GROUP, X_VERSION,
            self.namespace, plural,
        )  # fmt: skip

    def _changed(self) -> None:
        if self.listed != {OBJECTIVES, REWRITES}:
            return  # both kinds listed first: never publish half a policy
        objectives, rewrites = [], []
        for name, obj in self.objects[OBJECTIVES].items():
            try:
                objectives.append(policy_core.objective(obj, self.pools))
            except policy_core.PolicyError as exc:
                log.warning("InferenceObjective %s skipped: %s", name, exc)
        for name, obj in self.objects[REWRITES].items():
            try:
                rewrites.append(policy_core.rewrite(obj, self.pools))
            except policy_core.PolicyError as exc:
                log.warning("InferenceModelRewrite %s skipped: %s", name, exc)
        built = policy_core.build(objectives, rewrites, source=f"kubernetes/{self.namespace}")
        if built != self._last:
            self._last = built
            log.info("inference policy: %d objectives, %d rewrites", len(objectives), len(rewrites))
            self.on_policy(built)


def _object_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


class KubernetesDiscovery:
    """Every configured Kubernetes source, reported as one view; and, when configured, the
    inference policy (:class:`_PolicyWatch`), handed to ``on_policy``."""

    name = "kubernetes"

    def __init__(
        self,
        cfg: KubernetesConfig,
        *,
        base_dir: Path | None = None,
        on_policy: Callable[[InferencePolicy], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._base = base_dir or Path.cwd()
        self.on_policy = on_policy

    async def _client(self) -> client.ApiClient:
        conf = client.Configuration()
        if self.cfg.kubeconfig:
            path = Path(self.cfg.kubeconfig)
            if not path.is_absolute():
                path = self._base / path
            await config.load_kube_config(config_file=str(path), client_configuration=conf)
        elif self.cfg.api_url is None:
            try:
                config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
            except config.ConfigException:
                await config.load_kube_config(client_configuration=conf)
        if self.cfg.api_url:
            conf.host = self.cfg.api_url
        return client.ApiClient(configuration=conf)

    async def run(self, report: Report) -> None:
        api = await self._client()
        changed = asyncio.Event()
        watches = [_SourceWatch(api, s, self.cfg.retry_s, changed) for s in self.cfg.sources]
        tasks = [asyncio.create_task(w.run(), name=w.name) for w in watches]
        if self.cfg.policy.enabled and self.on_policy is not None:
            policy = _PolicyWatch(api, self.cfg, self.on_policy)
            tasks.append(asyncio.create_task(policy.run(), name="inference-policy"))
        if not watches:
            report(self.name, [])  # a policy-only source: no endpoints of its own
        try:
            last: list[Endpoint] | None = None
            while True:
                await changed.wait()
                changed.clear()
                await asyncio.sleep(0.05)  # coalesce a burst of pod events into one report
                view = [ep for w in watches for ep in w.endpoints()]
                if view != last:
                    log.info("kubernetes discovery: %d endpoints", len(view))
                    report(self.name, view)
                    last = view
        finally:
            await cancel_and_wait(tasks)
            await api.close()
