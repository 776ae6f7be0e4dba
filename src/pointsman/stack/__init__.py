"""``pointsman up``: the whole stack on one machine, for trying Pointsman and for tests.

It starts, in order: nats-server (unless ``NATS_URL`` names one), redis-server (when one is
installed: the Responses API's state and the classifier's sessions live there), simulated vLLM
replicas, the metrics-collector, the picker, the classifier (when enabled), the extproc-shim, and
Envoy wired to the shim. ``--mode selector`` runs the model-selector shape instead: the shim
chooses the model only, and a second shim in endpoint-picker mode (``shim.mode: picker``) is
each pool's own endpoint picker behind it, as llm-d's or the Inference Extension's would be. Every part is a real process on loopback; :class:`Stack` is the same thing as a Python
API for tests and benchmarks.

Secure by default: the nats-server it starts requires each service's own NKey, with the subject
permissions of :mod:`pointsman.natsauth` (generated at start in the run directory's
``credentials/``, :mod:`pointsman.stack.credentials`), optionally over TLS from a throwaway CA
(``--nats-tls``); every port binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pointsman import configfile
from pointsman.debug import DebugConfig
from pointsman.stack import credentials
from pointsman.stack.envoy import EnvoyOptions, ShimTls, render_yaml
from pointsman.stack.gateway import GatewayConfig
from pointsman.stack.procs import (
    Child,
    StackError,
    binary,
    free_port,
    free_port_block,
    http_status,
    port_free,
    redis_argv,
    spawn,
    stop_all,
    wait_ready,
)
from pointsman.stack.supervisor import RestartPolicy, Supervisor

__all__ = ["Stack", "StackError", "StackOptions", "main"]

DEFAULT_MODELS = ["llama-3.1-8b-instruct", "qwen3-8b"]
_STEM = ("math", "physics", "chemistry", "computer science", "engineering")
#: The demo fleet's model selection: STEM prompts to the reasoning model with thinking on, the
#: rest to the instruct model. A user config's ``classifier:`` section overrides it.
DEMO_ROUTING: dict[str, Any] = {
    "default_model": "llama-3.1-8b-instruct",
    "categories": {
        category: {"models": [{"model": "qwen3-8b", "score": 0.9, "reasoning": True}]}
        for category in _STEM
    },
}
SERVICES = ("collector", "picker", "classifier", "shim")
_MODULES = {
    "collector": "pointsman_collector",
    "picker": "pointsman_picker",
    "classifier": "pointsman_classifier",
    "shim": "pointsman_shim",
}


@dataclass
class StackOptions:
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    replicas: int = 2
    gateway_port: int = 8080
    host: str = "127.0.0.1"
    #: A Pointsman config file whose sections are merged over the generated ones.
    config: Path | None = None
    #: Start simulated vLLM replicas; off = use the config file's ``pools``.
    simulate: bool = True
    sim_args: list[str] = field(default_factory=list)
    #: More simulator arguments for one model's replicas (after ``sim_args``): a slower model.
    model_sim_args: dict[str, list[str]] = field(default_factory=dict)
    #: One simulator process per replica (``sim-MODEL-I``) instead of one per model serving
    #: every replica: a replica can then die alone (the chaos tests kill one).
    sim_process_per_replica: bool = False
    picker_replicas: int = 1
    body_mode: Literal["BUFFERED", "FULL_DUPLEX_STREAMED"] = "BUFFERED"
    #: How Envoy gives the shim the response: see ``EnvoyOptions.response_path``.
    response_path: Literal["observer", "inline"] = "observer"
    failure_mode: Literal["fail-open", "fail-closed"] = "fail-open"
    #: ``full``: one shim chooses model and endpoint; ``selector``: the shim chooses the model
    #: and a second shim (``shim.mode: picker``) is every pool's endpoint picker.
    mode: Literal["full", "selector"] = "full"
    #: Start the classifier service (None: when its package and torch are installed).
    classifier: bool | None = False
    nats_url: str | None = None
    #: Start nats-server with authorization: one generated NKey per service (off: an open bus,
    #: only for benchmarks that measure what authentication costs).
    nats_auth: bool = True
    #: nats-server over TLS, with a throwaway CA generated at start.
    nats_tls: bool = False
    #: ext_proc over mutual TLS between Envoy and the shim, with a throwaway CA.
    extproc_tls: bool = False
    #: Start redis-server for the Responses API's store and the classifier's sessions (None:
    #: when a redis-server binary is found; without Redis, stateful Responses calls answer 503).
    redis: bool | None = None
    workdir: Path | None = None
    #: Sections merged over everything else (tests use it to tune deadlines).
    overrides: dict[str, Any] = field(default_factory=dict)
    ready_timeout: float = 60.0


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Stack:
    """A running local stack. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.children: dict[str, Child] = {}
        self.config: dict[str, Any] = {}
        self.pools: dict[str, list[str]] = {}
        self.gateway_url = ""
        self.nats_url = ""
        self.redis_url = ""
        #: The started redis-server's password (``redis.password_file`` of every service).
        self.redis_password_file: Path | None = None
        self.config_path: Path | None = None
        self.workdir = Path(self.options.workdir or tempfile.mkdtemp(prefix="pointsman-stack-"))
        self.log_dir = self.workdir / "logs"
        self._requested_port = self.options.gateway_port
        self.gateway_port = self.options.gateway_port
        self.ports: dict[str, int] = {}
        #: Each service identity's NATS credential (when this stack started nats-server).
        self.identities: dict[str, credentials.Identity] = {}
        self.nats_section: dict[str, Any] = {}
        self.supervisor: Supervisor | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every part. Ports are chosen free but bound later by other processes, so a
        port taken in between (another program on a busy machine) is retried with new ports."""
        for attempt in range(3):
            try:
                self._start()
                return
            except StackError as exc:
                self.stop()
                self.children.clear()
                if attempt == 2 or not _port_race(str(exc)):
                    raise
            except BaseException:
                self.stop()
                raise

    def _start(self) -> None:
        o = self.options
        user = configfile.read(o.config) if o.config else {}
        if self._requested_port:
            if not port_free(self._requested_port, o.host):
                raise StackError(
                    f"gateway port {self._requested_port} on {o.host} is taken; "
                    "choose another with --port"
                )
            self.gateway_port = self._requested_port
        else:
            self.gateway_port = free_port(o.host)

        self.nats_url = o.nats_url or os.environ.get("NATS_URL") or self._start_nats()
        self.redis_url = self._start_redis()
        if o.picker_replicas > 1 and not self.redis_url:
            raise StackError(
                f"{o.picker_replicas} pickers share their state through Redis: install "
                "redis-server (or leave out --no-redis), or run one picker"
            )
        if o.simulate:
            self.pools = self._start_simulators()
        else:
            self.pools = _pools_from_config(user)
            if not self.pools:
                raise StackError("--no-sim needs a config file with a 'pools:' section")

        with_classifier = o.classifier
        if with_classifier is None:
            with_classifier = all(
                importlib.util.find_spec(m) is not None for m in ("pointsman_classifier", "torch")
            )
        self.ports = {
            "shim_grpc": free_port(),
            "shim_health": free_port(),
            "shim_http": free_port(),
            "epp_grpc": free_port(),
            "epp_health": free_port(),
            "epp_http": free_port(),
            "collector_http": free_port(),
            "classifier_http": free_port(),
            "envoy_admin": free_port(),
        }
        nats_section = dict(self.nats_section) or {
            k: v for k, v in (user.get("nats") or {}).items() if k != "url"
        }
        generated: dict[str, Any] = {
            "nats": {"url": self.nats_url, **nats_section},
            **(
                {"redis": {"password_file": str(self.redis_password_file)}}
                if self.redis_password_file is not None
                else {}
            ),
            # the user's entries as written (labels, engines); simulators: plain addresses
            "pools": self.pools if o.simulate else user["pools"],
            "shim": {
                "mode": o.mode,
                "listen": f"127.0.0.1:{self.ports['shim_grpc']}",
                "health_listen": f"127.0.0.1:{self.ports['shim_health']}",
                "http_host": "127.0.0.1",
                "http_port": self.ports["shim_http"],
                "default_model": next(iter(self.pools)),
                "failure_mode": o.failure_mode,
                "body_mode": o.body_mode,
                "classifier": {"enabled": bool(with_classifier)},
                "responses": {"redis_url": self.redis_url},
            },
            "picker": {
                "http_host": "127.0.0.1",
                # several pickers decide as one: prefix affinity and in-flight counts in Redis
                **(
                    {"shared_state": {"redis_url": self.redis_url}} if o.picker_replicas > 1 else {}
                ),
            },
            "collector": {"http_host": "127.0.0.1", "http_port": self.ports["collector_http"]},
        }
        if with_classifier:
            generated["classifier"] = {
                "http_host": "127.0.0.1",
                "http_port": self.ports["classifier_http"],
            }
            if self.redis_url:
                generated["classifier"]["sessions"] = {
                    "enabled": True,
                    "redis_url": self.redis_url,
                }
            if o.simulate and o.models == DEFAULT_MODELS:
                generated["classifier"].update(DEMO_ROUTING)
        if o.extproc_tls:
            files = credentials.throwaway_ca(self.workdir / "extproc-tls", ["127.0.0.1"])
            generated["shim"]["tls"] = {
                "cert_file": str(files.cert_file),
                "key_file": str(files.key_file),
                "client_ca_file": str(files.ca_file),
            }
        user_sections = {k: v for k, v in user.items() if k not in {"nats", "pools"}}
        self.config = _merge(_merge(generated, user_sections), o.overrides)
        self.config_path = self.workdir / "pointsman.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

        self._start_service("collector")
        for i in range(o.picker_replicas):
            self._start_service("picker", index=i)
        if with_classifier:
            self._start_service("classifier", timeout=max(o.ready_timeout, 120))
        self._start_service("shim")
        if o.mode == "selector":
            self._start_pool_picker()
        self._start_envoy()
        self.gateway_url = f"http://{o.host}:{self.gateway_port}"
        self._wait_models()

    def stop(self) -> None:
        """Stop every child (SIGTERM to all at once, SIGKILL after 10 s), and the supervisor
        first so that nothing is restarted meanwhile."""
        if self.supervisor is not None:
            self.supervisor.stop()
        stop_all(list(reversed(list(self.children.values()))))

    def supervise(
        self, log: Callable[[str], None] | None = None, policy: RestartPolicy | None = None
    ) -> Supervisor:
        """Restart dead children with backoff from a background thread until :meth:`stop`
        (``pointsman up`` runs the same :class:`Supervisor` in its main loop)."""
        self.supervisor = Supervisor(self.children, log or (lambda _: None), policy)
        self.supervisor.start()
        return self.supervisor

    # -- parts ------------------------------------------------------------------------------

    def _start_nats(self) -> str:
        o = self.options
        port = free_port()
        store = self.workdir / "nats"
        tls = None
        if o.nats_tls:
            tls = credentials.throwaway_ca(self.workdir / "tls", ["127.0.0.1", "localhost"])
            self.nats_section["tls"] = {"ca_file": str(tls.ca_file)}
        # Always a config file: max_payload (above shim.max_body_bytes) has no flag.
        keys: dict[str, list[str]] | None = None
        if o.nats_auth:
            self.identities = credentials.generate(self.workdir / "credentials")
            keys = {name: [i.public_key] for name, i in self.identities.items()}
        conf = self.workdir / "nats-server.conf"
        # The user's renamed subjects (collector.sharding.subject, latest.bucket) count.
        user = _merge(configfile.read(o.config) if o.config else {}, o.overrides)
        conf.write_text(
            credentials.nats_server_conf(
                listen=f"127.0.0.1:{port}", store_dir=store, keys=keys, config=user, tls=tls
            )
        )
        argv = [binary("nats-server"), "-c", str(conf)]
        child = spawn("nats-server", argv, self.log_dir, die_with_parent=True)
        self.children["nats-server"] = child
        scheme = "tls" if tls is not None else "nats"
        url = f"{scheme}://127.0.0.1:{port}"
        wait_ready(child, lambda: not port_free(port), 30, "nats-server")
        return url

    def nats_config(self, identity: str | None = None) -> Any:
        """The ``nats:`` config of one identity of this stack (tests and benchmarks connect as a
        service does: ``nats.connect(**stack.nats_config("picker").connect_options("picker"))``);
        a :class:`pointsman.bus.NatsConfig`."""
        from pointsman.bus import NatsConfig

        section = {**self.config.get("nats", {"url": self.nats_url})}
        if identity is not None and identity in self.identities:
            section["nkey_seed_file"] = str(self.identities[identity].seed_file)
        return NatsConfig.model_validate(section)

    def _start_redis(self) -> str:
        """redis-server on a free port, without persistence; ``""`` when not wanted or none is
        installed (then only ``redis=True`` is an error)."""
        want = self.options.redis
        if want is False:
            return ""
        if self.options.picker_replicas > 1:
            want = True
        try:
            path = binary("redis-server")
        except StackError:
            if want:
                raise
            return ""
        port = free_port()
        store = self.workdir / "redis"
        store.mkdir(parents=True, exist_ok=True)
        argv = redis_argv(path, port, str(store))
        if self.options.nats_auth:  # secure by default: a generated password (hash on disk)
            secret = credentials.password()
            self.redis_password_file = credentials.write_secret(
                self.workdir / "credentials" / "redis.password", secret + "\n"
            )
            acl = credentials.write_secret(
                self.workdir / "credentials" / "redis.acl",
                credentials.redis_default_acl(secret),
            )
            argv += ["--aclfile", str(acl)]
        child = spawn("redis-server", argv, self.log_dir, die_with_parent=True)
        self.children["redis-server"] = child
        wait_ready(child, lambda: not port_free(port), 30, "redis-server")
        return f"redis://127.0.0.1:{port}/0"

    def _start_simulators(self) -> dict[str, list[str]]:
        o = self.options
        pools: dict[str, list[str]] = {}
        for model in o.models:
            base = free_port_block(o.replicas)
            argv = [
                sys.executable,
                "-m",
                "pointsman.sim",
                "--host",
                "127.0.0.1",
                "--port",
                str(base),
                "--count",
                str(o.replicas),
                "--model",
                model,
                *o.sim_args,
                *o.model_sim_args.get(model, []),
            ]
            pools[model] = [f"127.0.0.1:{base + i}" for i in range(o.replicas)]
            if o.sim_process_per_replica:
                for i in range(o.replicas):
                    one = [*argv]
                    one[one.index("--port") + 1] = str(base + i)
                    one[one.index("--count") + 1] = "1"
                    self.children[f"sim-{model}-{i}"] = spawn(
                        f"sim-{model}-{i}", one, self.log_dir, die_with_parent=True
                    )
            else:
                child = spawn(f"sim-{model}", argv, self.log_dir, die_with_parent=True)
                self.children[f"sim-{model}"] = child
        for model, endpoints in pools.items():
            for i, endpoint in enumerate(endpoints):
                owner = self.children.get(f"sim-{model}") or self.children[f"sim-{model}-{i}"]
                url = f"http://{endpoint}/health"
                wait_ready(owner, _ok(url), 60, f"simulator {endpoint}")
        return pools

    def _start_service(self, service: str, index: int = 0, timeout: float | None = None) -> None:
        assert self.config_path is not None
        name = service if index == 0 else f"{service}-{index}"
        config_path = self.config_path
        port: int
        if service == "picker":
            port = free_port()
            config = _merge(self.config, {"picker": {"http_port": port}})
            config_path = self.workdir / f"pointsman-{name}.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            self.ports[f"{name}_http"] = port
        else:
            port = int(self.config[service]["http_port"])
        argv = [sys.executable, "-m", _MODULES[service], "--config", str(config_path)]
        child = spawn(
            name, argv, self.log_dir, env=self._service_env(service), die_with_parent=True
        )
        self.children[name] = child
        url = f"http://127.0.0.1:{port}/readyz"
        wait_ready(
            child, lambda: http_status(url) == 200, timeout or self.options.ready_timeout, name
        )

    def _service_env(self, identity: str) -> dict[str, str]:
        """The bus URL and, with NATS authentication, the NKey of the service's identity (the
        pool picker of the model-selector shape is a shim: it speaks on the bus as one)."""
        env = {"NATS_URL": self.nats_url}
        if identity in self.identities:
            env["NATS_NKEY_SEED_FILE"] = str(self.identities[identity].seed_file)
        return env

    def _start_pool_picker(self) -> None:
        """The pools' endpoint picker of the model-selector shape: a shim in ``picker`` mode
        (the endpoint-picker protocol in front of Pointsman's picker), its own ports."""
        shim = {
            **self.config["shim"],
            "mode": "picker",
            "listen": f"127.0.0.1:{self.ports['epp_grpc']}",
            "health_listen": f"127.0.0.1:{self.ports['epp_health']}",
            "http_port": self.ports["epp_http"],
            "classifier": {"enabled": False},
        }
        config_path = self.workdir / "pointsman-pool-picker.yaml"
        config_path.write_text(yaml.safe_dump({**self.config, "shim": shim}, sort_keys=False))
        argv = [sys.executable, "-m", _MODULES["shim"], "--config", str(config_path)]
        child = spawn(
            "pool-picker", argv, self.log_dir, env=self._service_env("shim"), die_with_parent=True
        )
        self.children["pool-picker"] = child
        url = f"http://127.0.0.1:{self.ports['epp_http']}/readyz"
        wait_ready(
            child, lambda: http_status(url) == 200, self.options.ready_timeout, "pool-picker"
        )

    def _start_envoy(self) -> None:
        o = self.options
        shim = self.config["shim"]
        host, _, port = str(shim["listen"]).rpartition(":")
        options = EnvoyOptions(
            listen_port=self.gateway_port,
            listen_address=o.host,
            admin_port=self.ports["envoy_admin"],
            shim_host="127.0.0.1" if host in {"0.0.0.0", ""} else host,
            shim_port=int(port),
            pools=self.pools,
            default_pool=shim.get("default_model"),
            body_mode=o.body_mode,
            response_path=o.response_path,
            failure_mode_allow=o.failure_mode == "fail-open",
            mode=o.mode,
            pool_pickers={p: f"127.0.0.1:{self.ports['epp_grpc']}" for p in self.pools}
            if o.mode == "selector"
            else {},
            max_body_bytes=int(shim.get("max_body_bytes", 4 * 1024 * 1024)),
            gateway=configfile.section(self.config, "gateway", GatewayConfig),
            report_endpoint=configfile.section(self.config, "debug", DebugConfig).report_endpoint,
            shim_tls=_shim_tls(shim),
            # the shim may hold a request while it waits in the picker's flow control
            message_timeout_ms=message_timeout_ms(shim),
        )
        path = self.workdir / "envoy.yaml"
        path.write_text(render_yaml(options))
        argv = [
            binary("envoy"),
            "-c",
            str(path),
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "--concurrency",
            "2",
        ]
        child = spawn("envoy", argv, self.log_dir, die_with_parent=True)
        self.children["envoy"] = child
        admin = f"http://127.0.0.1:{self.ports['envoy_admin']}/ready"
        wait_ready(child, lambda: http_status(admin) == 200, 60, "envoy")

    def _wait_models(self) -> None:
        """Ready for users: the gateway lists every pool (snapshots reached the picker)."""
        deadline = time.monotonic() + self.options.ready_timeout
        want = set(self.pools)
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.models()
                if want <= {m["id"] for m in last.get("data", [])}:
                    return
            except Exception as exc:
                last = exc
            time.sleep(0.1)
        raise StackError(f"the gateway does not list every model after start-up: {last!r}")

    # -- for tests --------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.gateway_url}/v1/models", timeout=2) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def stop_service(self, name: str) -> None:
        self.children[name].stop()

    def restart_service(self, name: str) -> None:
        child = self.children.pop(name)
        child.stop()
        service, _, index = name.partition("-")
        self._start_service(service, int(index or 0))


def message_timeout_ms(shim: dict[str, Any]) -> int:
    """Envoy's ext_proc ``message_timeout``: above everything the shim may wait for before it
    answers the request body (classifier, pick, flow control's queue), at least 2 s."""
    classifier = shim.get("classifier") or {}
    waits = float(shim.get("pick_timeout_ms", 50)) + float(shim.get("queue_wait_ms", 700))
    if classifier.get("enabled"):
        # The shim's ClassifierCall defaults: a long prompt may wait up to max_timeout_ms.
        base = float(classifier.get("timeout_ms", 150))
        if float(classifier.get("timeout_per_kchar_ms", 200)) > 0:
            base = max(base, float(classifier.get("max_timeout_ms", 2000)))
        waits += base
    return max(2000, int(waits) + 1000)


def _shim_tls(shim: dict[str, Any]) -> ShimTls | None:
    """Envoy's side of ``shim.tls``: trust the CA that signed the shim's certificate (the
    throwaway CA of ``--extproc-tls`` signs one certificate for both ends)."""
    tls = shim.get("tls") or {}
    if not tls.get("cert_file"):
        return None
    ca = tls.get("client_ca_file") or tls["cert_file"]
    mutual = bool(tls.get("client_ca_file"))
    return ShimTls(
        ca_file=ca,
        cert_file=tls["cert_file"] if mutual else None,
        key_file=tls["key_file"] if mutual else None,
    )


def _port_race(message: str) -> bool:
    markers = ("Address already in use", "address already in use", "Failed to bind", "EADDRINUSE")
    return any(m in message for m in markers)


def _ok(url: str) -> Callable[[], bool]:
    return lambda: http_status(url) == 200


def _pools_from_config(data: dict[str, Any]) -> dict[str, list[str]]:
    pools = data.get("pools") or {}
    out: dict[str, list[str]] = {}
    for model, endpoints in pools.items():
        out[str(model)] = [e if isinstance(e, str) else str(e["address"]) for e in endpoints]
    return out


# -- CLI -----------------------------------------------------------------------------------------


#: The flags that pick one of a few ways (the first is the default): flag, choices, help.
_CHOICES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "--mode",
        ("full", "selector"),
        "'full': the shim chooses the model and the endpoint; 'selector': the shim chooses "
        "the model only (shim.mode: selector) and a second shim in endpoint-picker mode is each "
        "pool's own picker behind it, the shape of Pointsman in front of llm-d or the Inference "
        "Extension",
    ),
    ("--body-mode", ("BUFFERED", "FULL_DUPLEX_STREAMED"), "Envoy ext_proc request body mode"),
    (
        "--response-path",
        ("observer", "inline"),
        "how the shim reads responses: 'observer' = a second ext_proc filter in Envoy's "
        "observability_mode, off the client's critical path; 'inline' = the decision filter "
        "also carries the response (one gRPC stream per request instead of two: less CPU, "
        "more latency)",
    ),
    (
        "--failure-mode",
        ("fail-open", "fail-closed"),
        "what happens when the picker or the shim is down",
    ),
)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Start the whole Pointsman stack on this machine: nats-server, simulated vLLM "
            "replicas, the services and Envoy. Prints the gateway URL; a child that exits is "
            "restarted with backoff; Ctrl-C (or SIGTERM) stops everything."
        ),
    )
    p.add_argument("--port", type=int, default=8080, help="gateway (Envoy) port (default: 8080)")
    p.add_argument(
        "--host", default="127.0.0.1", help="gateway listen address (default: 127.0.0.1)"
    )
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated served model names to simulate (default: {','.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--replicas", type=int, default=2, help="simulated replicas per model (default: 2)"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="Pointsman config file merged over the generated one (its 'pools' are used with --no-sim)",
    )
    p.add_argument(
        "--no-sim",
        action="store_true",
        help="do not start simulators; route to the 'pools' of --config (e.g. real vLLM servers)",
    )
    p.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every simulator, repeatable (e.g. --sim-arg=--time-scale=0.1)",
    )
    p.add_argument(
        "--pickers",
        type=int,
        default=1,
        help="picker replicas (default: 1); more than one starts redis-server, through which "
        "they share prefix affinity and in-flight counts",
    )
    for flag, choices, text in _CHOICES:
        p.add_argument(
            flag, choices=list(choices), default=choices[0], help=f"{text} (default: {choices[0]})"
        )
    p.add_argument(
        "--classifier",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the classifier (model selection for 'auto', jailbreak and PII checks); "
        "--no-classifier: do not, 'auto' goes to the first model (default: when installed)",
    )
    p.add_argument(
        "--redis",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start redis-server (the Responses API's state, sessions); --no-redis: do not, "
        "stateful Responses calls answer 503 (default: when installed)",
    )
    p.add_argument(
        "--nats-tls",
        action="store_true",
        help="NATS over TLS, with a throwaway CA generated at start (authentication is always on)",
    )
    p.add_argument(
        "--extproc-tls",
        action="store_true",
        help="ext_proc between Envoy and the shim over mutual TLS, with a throwaway CA",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="honour x-pointsman-debug (scores, classifier debug headers) and report the "
        "serving replica (x-pointsman-endpoint); off by default: both inform an attacker",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where config files and logs go (default: a new temporary directory)",
    )
    return p


def main(argv: Sequence[str] | None = None, prog: str = "pointsman up") -> int:
    args = _parser(prog).parse_args(argv)
    options = StackOptions(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        replicas=args.replicas,
        gateway_port=args.port,
        host=args.host,
        config=args.config,
        simulate=not args.no_sim,
        sim_args=list(args.sim_arg),
        picker_replicas=args.pickers,
        body_mode=args.body_mode,
        response_path=args.response_path,
        failure_mode=args.failure_mode,
        mode=args.mode,
        classifier=args.classifier,
        redis=args.redis,
        workdir=args.workdir,
        nats_tls=args.nats_tls,
        extproc_tls=args.extproc_tls,
        overrides={"debug": {"enabled": True, "report_endpoint": True}} if args.debug else {},
    )
    stack = Stack(options)
    stop = threading.Event()
    starting = True

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if starting:  # interrupt start-up: Stack.start stops what it started
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _say(f"starting Pointsman (logs in {stack.log_dir}) ...")
    try:
        try:
            stack.start()
        finally:
            starting = False
    except StackError as exc:
        _say(f"{prog}: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    try:
        _say(_banner(stack))
        supervisor = Supervisor(stack.children, lambda text: _say(f"{prog}: {text}", err=True))
        stack.supervisor = supervisor
        while not stop.wait(0.2):
            supervisor.check()
        _say("stopping ...")
    finally:
        # whatever happened to our output (the reader of a pipe gone with Ctrl-C), stop all
        stack.stop()
    _say("stopped.")
    return 0


def _say(text: str, err: bool = False) -> None:
    """Print, surviving a closed output: with ``pointsman up | tee log``, Ctrl-C ends ``tee``
    too, and a failed print must not skip stopping the stack. Later output goes nowhere."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def _banner(stack: Stack) -> str:
    model = next(iter(stack.pools))
    auto = bool(stack.config["shim"]["classifier"]["enabled"])
    auto_example = (
        f"  curl -i {stack.gateway_url}/v1/chat/completions -H 'content-type: application/json' \\\n"
        '    -d \'{"model": "auto", "messages": [{"role": "user", "content": '
        '"What is the derivative of x^3 + 2x?"}]}\'\n'
        if auto
        else ""
    )
    return (
        "\nPointsman is up.\n"
        f"  gateway:  {stack.gateway_url}\n"
        f"  models:   {', '.join(stack.pools)}" + (", auto" if auto else "") + "\n"
        f"  config:   {stack.config_path}\n"
        f"  logs:     {stack.log_dir}\n\n"
        "Try:\n"
        f"  curl {stack.gateway_url}/v1/models\n"
        f"  curl -i {stack.gateway_url}/v1/chat/completions -H 'content-type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'\n'
        + auto_example
        + "\nA child that exits is restarted (with backoff). Press Ctrl-C to stop."
    )
