"""A fake Kubernetes API server that speaks the real JSON: list and watch (chunked,
newline-delimited events) of pods and of InferencePools, with label and field selectors and
resourceVersions. Just enough of the API for the collector's discovery, served over real HTTP so
the real client library (kubernetes-asyncio) is what is tested."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

POOLS_PATH = "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools"
X_PATH = "/apis/inference.networking.x-k8s.io/v1alpha2/namespaces/{ns}/"
#: kind -> (apiVersion, list kind): what each collection answers.
KINDS = {
    "pods": ("v1", "PodList"),
    "pools": ("inference.networking.k8s.io/v1", "InferencePoolList"),
    "objectives": ("inference.networking.x-k8s.io/v1alpha2", "InferenceObjectiveList"),
    "rewrites": ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewriteList"),
}


def pod(
    name: str, ip: str, labels: dict[str, str], *, ready: bool = True, ns: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}"},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.32.0"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
        },
    }


def inference_pool(
    name: str, match: dict[str, str], ports: list[int], ns: str = "default"
) -> dict[str, Any]:
    return {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": match},
            "targetPorts": [{"number": p} for p in ports],
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}},
        },
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@dataclass
class _Watcher:
    kind: str
    ns: str
    selector: str
    field_name: str | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class FakeKube:
    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self.watchers: list[_Watcher] = []
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.lists = 0
        self._closing = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    # ----- mutations (what a test does to the cluster) ---------------------------------------

    def _put(self, kind: str, obj: dict[str, Any], event: str) -> None:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        if event == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        self.history.append((self.rv, kind, {"type": event, "object": obj}))
        for w in self.watchers:
            if w.kind == kind and self._selected(w, obj):
                w.queue.put_nowait({"type": event, "object": obj})

    def apply_pod(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._put("pods", obj, "MODIFIED" if key in self.objects["pods"] else "ADDED")

    def delete_pod(self, name: str, ns: str = "default") -> None:
        self._put("pods", self.objects["pods"][(ns, name)], "DELETED")

    def apply_pool(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._put("pools", obj, "MODIFIED" if key in self.objects["pools"] else "ADDED")

    def apply(self, kind: str, obj: dict[str, Any]) -> None:
        """Create or update an object of any kind (``objectives``, ``rewrites``, ...)."""
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self._put(kind, obj, "MODIFIED" if key in self.objects[kind] else "ADDED")

    def delete(self, kind: str, name: str, ns: str = "default") -> None:
        self._put(kind, self.objects[kind][(ns, name)], "DELETED")

    def expire_watches(self) -> None:
        """Answer every open watch with 410 Gone, as the API server does after compaction."""
        gone = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": "too old resource version",
            "reason": "Expired",
            "code": 410,
        }
        for w in self.watchers:
            w.queue.put_nowait({"type": "ERROR", "object": gone})

    # ----- HTTP ------------------------------------------------------------------------------

    def _selected(self, w: _Watcher, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        if meta.get("namespace", "default") != w.ns:
            return False
        if w.field_name is not None and meta["name"] != w.field_name:
            return False
        return _matches(meta.get("labels") or {}, w.selector)

    async def _serve(self, request: web.Request, kind: str) -> web.StreamResponse:
        ns = request.match_info["ns"]
        selector = request.query.get("labelSelector", "")
        fsel = request.query.get("fieldSelector", "")
        field_name = fsel.split("=", 1)[1] if fsel.startswith("metadata.name=") else None
        w = _Watcher(kind, ns, selector, field_name)
        if request.query.get("watch") not in ("true", "True", "1"):
            self.lists += 1
            items = [o for o in self.objects[kind].values() if self._selected(w, o)]
            api, list_kind = KINDS[kind]
            return web.json_response(
                {
                    "apiVersion": api,
                    "kind": list_kind,
                    "metadata": {"resourceVersion": str(self.rv)},
                    "items": items,
                }
            )
        timeout = float(request.query.get("timeoutSeconds", "30"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        # Replay what happened since the client's resourceVersion, as the API server does.
        since = int(request.query.get("resourceVersion") or self.rv)
        for rv, k, event in self.history:
            if rv > since and k == kind and self._selected(w, event["object"]):
                w.queue.put_nowait(event)
        self.watchers.append(w)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not self._closing.is_set():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                get = asyncio.ensure_future(w.queue.get())
                closing = asyncio.ensure_future(self._closing.wait())
                done, _ = await asyncio.wait(
                    {get, closing}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                closing.cancel()
                if get not in done:
                    get.cancel()
                    break
                event = get.result()
                await resp.write((json.dumps(event) + "\n").encode())
                if event["type"] == "ERROR":
                    break
        finally:
            self.watchers.remove(w)
        return resp

    async def start(self) -> str:
        app = web.Application()

        async def pods(r: web.Request) -> web.StreamResponse:
            return await self._serve(r, "pods")

        async def pools(r: web.Request) -> web.StreamResponse:
            return await self._serve(r, "pools")

        async def objectives(r: web.Request) -> web.StreamResponse:
            return await self._serve(r, "objectives")

        async def rewrites(r: web.Request) -> web.StreamResponse:
            return await self._serve(r, "rewrites")

        app.router.add_get("/api/v1/namespaces/{ns}/pods", pods)
        app.router.add_get(POOLS_PATH, pools)
        app.router.add_get(X_PATH + "inferenceobjectives", objectives)
        app.router.add_get(X_PATH + "inferencemodelrewrites", rewrites)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        if self.runner is not None:
            await self.runner.cleanup()
