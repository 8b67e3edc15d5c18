"""docker/ and contrib/ match the code: the compose config loads with Parley's own
loader (so every key it sets is in the schema) and uses the stack's Redis and MinIO;
compose passes every variable the config reads and sets none that nothing reads; YAML
config snippets in the READMEs are valid too; the image's dependency pins are current;
the reverse-proxy samples route the WebSocket endpoint."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.trial import unittest

from homeserver.auth.access_tokens import generate_signing_key_pem
from homeserver.config import ConfigError, load_config, parse_config
from homeserver.config.schema import CONFIG_SCHEMA
from homeserver.rest.client.websocket import WS_PATH

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_CONFIG = DOCKER / "parley.compose.yaml"
#: Variables the image itself reads (Dockerfile, entrypoint), not the config.
IMAGE_VARIABLES = {"PARLEY_CONFIG", "PARLEY_DATA_DIR", "PARLEY_SERVER_NAME",
                   "PARLEY_HEALTHCHECK_URL"}
#: What each ``{env: ...}`` reads in these tests: 32 bytes in Base64, valid as any secret.
DUMMY_SECRET = base64.b64encode(b"k" * 32).decode()


def env_refs(node: Any) -> set[str]:
    """Every ``{env: NAME}`` secret reference in a config tree."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            return {node["env"]}
        return set().union(*(env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(env_refs(v) for v in node)) if node else set()
    return set()


class ComposeConfigTest(unittest.TestCase):
    def setUp(self) -> None:
        self.raw = yaml.safe_load(COMPOSE_CONFIG.read_text())
        self.compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
        self.parley = self.compose["services"]["parley"]

    def _load(self) -> Any:
        values = {name: DUMMY_SECRET for name in env_refs(self.raw)}
        saved = {name: os.environ.get(name) for name in values}
        os.environ.update(values)
        try:
            return load_config(COMPOSE_CONFIG)
        finally:
            for name, old in saved.items():
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old

    def test_loads_with_the_real_loader(self) -> None:
        try:
            config = self._load()
        except ConfigError as e:
            self.fail(f"docker/parley.compose.yaml is refused: {e}")
        self.assertEqual(config.database.engine, "postgres")
        self.assertEqual(config.database.host, "postgres")

    def test_redis_is_the_limiter_backend(self) -> None:
        config = self._load()
        self.assertEqual(config.rate_limits.backend, "redis")
        assert config.redis is not None
        self.assertIn(config.redis.host, self.compose["services"])
        self.assertIn("redis", self.parley["depends_on"])

    def test_minio_is_the_media_store(self) -> None:
        config = self._load()
        self.assertEqual(config.media.store, "s3")
        s3 = config.media.s3
        assert s3 is not None
        host = re.match(r"https?://([^:/]+)", s3.endpoint_url or "")
        assert host is not None
        self.assertIn(host.group(1), self.compose["services"])
        init = " ".join(self.compose["services"]["minio-init"]["command"])
        self.assertIn(f"local/{s3.bucket}", init)
        self.assertFalse(s3.presigned_redirect, "clients cannot reach the compose MinIO")

    def test_metrics_listener_not_published(self) -> None:
        config = self._load()
        metrics = [li for li in config.listeners if "metrics" in li.resources]
        self.assertEqual(len(metrics), 1)
        self.assertFalse(any("metrics" in li.resources and "client" in li.resources
                             for li in config.listeners))
        published = " ".join(str(p) for p in self.parley.get("ports", []))
        self.assertNotIn(f":{metrics[0].port}", published)

    def test_compose_passes_exactly_what_is_read(self) -> None:
        passed = set(self.parley["environment"])
        read = env_refs(self.raw)
        self.assertEqual(read - passed, set(), "read by the config, not passed by compose")
        unused = {v for v in passed - read - IMAGE_VARIABLES}
        self.assertEqual(unused, set(), "passed by compose, read by nothing")
        self.assertEqual(self.parley["environment"]["PARLEY_CONFIG"], "/config/parley.yaml")

    def test_env_example_lists_every_required_variable(self) -> None:
        text = (DOCKER / "compose.yml").read_text()
        required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
        example = (DOCKER / ".env.example").read_text()
        listed = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.MULTILINE))
        self.assertEqual(required - listed, set())


class ReadmeSnippetsTest(unittest.TestCase):
    """YAML blocks in the READMEs whose top-level keys are config keys are checked
    against the schema (on top of a minimal valid config)."""

    def test_config_snippets_are_accepted(self) -> None:
        known = set(CONFIG_SCHEMA["properties"])
        base = {"server_name": "example.org",
                "auth": {"signing_keys": [{"kid": "k", "algorithm": "EdDSA",
                                           "key": generate_signing_key_pem("EdDSA")}]}}
        checked = 0
        readmes = [ROOT / "README.md", DOCKER / "README.md",
                   *sorted((ROOT / "contrib").glob("**/README.md"))]
        for readme in readmes:
            for block in re.findall(r"```ya?ml\n(.*?)```", readme.read_text(), re.DOTALL):
                try:
                    raw = yaml.safe_load(block)
                except yaml.YAMLError:
                    continue
                if not isinstance(raw, dict) or not raw or not set(raw) <= known:
                    continue
                refs = env_refs(raw)
                saved = {name: os.environ.get(name) for name in refs}
                os.environ.update(dict.fromkeys(refs, DUMMY_SECRET))
                try:
                    parse_config({**base, **raw}, base_dir=None)
                except ConfigError as e:
                    self.fail(f"{readme.relative_to(ROOT)}: snippet refused: {e}\n{block}")
                finally:
                    for name, old in saved.items():
                        if old is None:
                            os.environ.pop(name, None)
                        else:
                            os.environ[name] = old
                checked += 1
        self.assertGreater(checked, 0)


class ImageTest(unittest.TestCase):
    def test_dependencies_are_pinned_and_current(self) -> None:
        dockerfile = (DOCKER / "Dockerfile").read_text()
        self.assertIn("PIP_CONSTRAINT=/src/docker/constraints.txt", dockerfile)
        pins = (DOCKER / "constraints.txt").read_text()
        for name in ("twisted", "argon2-cffi", "psycopg2-binary", "txredisapi", "boto3"):
            self.assertRegex(pins, rf"(?m)^{name}==\S+$")
        done = subprocess.run([sys.executable, str(DOCKER / "lock_deps.py"), "--check"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)

    def test_entrypoint_lets_run_migrate_while_listening(self) -> None:
        entrypoint = (DOCKER / "entrypoint.sh").read_text()
        lines = [ln.strip() for ln in entrypoint.splitlines()]
        self.assertNotIn('parley migrate -c "$PARLEY_CONFIG"', lines)
        self.assertEqual(lines[-1], 'exec parley run -c "$PARLEY_CONFIG"')


class ReverseProxyTest(unittest.TestCase):
    def test_nginx_upgrades_the_websocket_path(self) -> None:
        conf = (ROOT / "contrib" / "reverse-proxy" / "nginx.conf").read_text()
        block = re.search(r"location = " + re.escape(WS_PATH) + r" \{(.*?)\}", conf, re.DOTALL)
        assert block is not None, "no location for the WebSocket endpoint"
        self.assertIn("proxy_set_header Upgrade $http_upgrade;", block.group(1))
        self.assertIn('proxy_set_header Connection "upgrade";', block.group(1))
        self.assertIn("proxy_http_version 1.1;", block.group(1))

    def test_caddy_proxies_the_websocket_path(self) -> None:
        conf = (ROOT / "contrib" / "reverse-proxy" / "Caddyfile").read_text()
        matcher = re.search(r"@parley path (.*)", conf)
        assert matcher is not None
        prefixes = [p.rstrip("*") for p in matcher.group(1).split()]
        self.assertTrue(any(WS_PATH.startswith(p) for p in prefixes), prefixes)


# ---- the `workers` stack (docker/compose.workers.yml) and the nginx routing sample

WORKERS_CONFIG = DOCKER / "parley.workers.yaml"
NGINX_WORKERS = ROOT / "contrib" / "reverse-proxy" / "nginx-workers.conf"
NGINX_COMPOSE = DOCKER / "nginx.workers.conf"


def load_with_env(path: Path, worker: str | None = None) -> Any:
    """``path`` through Parley's loader (as ``parley run -c path --worker worker``),
    every ``{env: ...}`` set to a dummy secret."""
    from homeserver.config.workers import select_worker

    values = {name: DUMMY_SECRET for name in env_refs(yaml.safe_load(path.read_text()))}
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        return select_worker(load_config(path), worker)
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def nginx_block(conf: str, header: str) -> str:
    """The body of the first ``header { ... }`` block (no nested braces), dedented."""
    m = re.search(re.escape(header) + r" \{\n(.*?)\n\s*\}", conf, re.DOTALL)
    assert m is not None, f"no {header!r} block"
    return "\n".join(line.strip() for line in m.group(1).splitlines())


def route(conf: str, method: str, path: str) -> str:
    """Where the routing map of ``conf`` sends ``method path``, as nginx would: the first
    matching regex in order, else the default."""
    body = nginx_block(conf, 'map "$request_method $uri" $parley_upstream')
    default = ""
    for line in body.splitlines():
        m = re.fullmatch(r'"~(.*)" (\w+);', line)
        if m is not None:
            if re.search(m.group(1), f"{method} {path}"):
                return m.group(2)
        elif line.startswith("default "):
            default = line.split()[1].rstrip(";")
    return default


#: (method, path, upstream): the README's route table, checked against both confs.
ROUTES = [
    ("GET", "/_matrix/client/v3/sync", "parley_sync"),
    ("GET", "/_matrix/client/v3/events", "parley_sync"),
    ("GET", WS_PATH, "parley_sync"),
    ("GET", "/_matrix/client/v3/rooms/!r:x/messages", "parley_client_readers"),
    ("GET", "/_matrix/client/v3/profile/@a:x", "parley_client_readers"),
    ("GET", "/_matrix/client/versions", "parley_client_readers"),
    ("POST", "/_matrix/client/v3/keys/query", "parley_client_readers"),
    ("POST", "/_matrix/client/v3/search", "parley_client_readers"),
    ("POST", "/_matrix/client/v3/user_directory/search", "parley_client_readers"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t1", "parley_main"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.room.name/", "parley_main"),
    ("POST", "/_matrix/client/v3/rooms/!r:x/join", "parley_main"),
    ("POST", "/_matrix/client/v3/createRoom", "parley_main"),
    ("POST", "/_matrix/client/v3/login", "parley_main"),
    ("POST", "/_matrix/client/v3/keys/upload", "parley_main"),
    ("POST", "/_matrix/client/v3/sync", "parley_main"),
    ("GET", "/_matrix/client/v3/login/sso/redirect", "parley_main"),
    ("GET", "/_synapse/admin/v2/users/@a:x", "parley_main"),
    ("GET", "/_matrix/client/v3/admin/whois/@a:x", "parley_main"),
    ("GET", "/_matrix/federation/v1/version", "parley_main"),
    ("PUT", "/_matrix/federation/v1/send/1", "parley_main"),
    ("GET", "/_matrix/client/v1/media/download/x/y", "parley_media"),
    ("POST", "/_matrix/media/v3/upload", "parley_media"),
    ("GET", "/_matrix/federation/v1/media/download/y", "parley_media"),
]


class NginxWorkersTest(unittest.TestCase):
    def test_routes(self) -> None:
        for conf_path in (NGINX_WORKERS, NGINX_COMPOSE):
            conf = conf_path.read_text()
            for method, path, upstream in ROUTES:
                self.assertEqual(route(conf, method, path), upstream,
                                 f"{conf_path.name}: {method} {path}")

    def test_read_routes_are_reads_for_parley(self) -> None:
        """Whatever nginx sends to a reader, a client worker serves (no extra hop)."""
        from homeserver.replication.routing import served_by_client_worker

        for method, path, upstream in ROUTES:
            if path != WS_PATH:
                reader = upstream in ("parley_sync", "parley_client_readers")
                self.assertEqual(served_by_client_worker(method, path), reader,
                                 f"{method} {path}")

    def test_compose_conf_has_the_samples_maps(self) -> None:
        sample, compose = NGINX_WORKERS.read_text(), NGINX_COMPOSE.read_text()
        for header in ('map "$request_method $uri" $parley_upstream',
                       "map $http_authorization $parley_sync_key",
                       "map $http_upgrade $parley_connection_upgrade"):
            self.assertEqual(nginx_block(sample, header), nginx_block(compose, header))

    def test_every_upstream_defined_and_sync_sticky(self) -> None:
        for conf_path in (NGINX_WORKERS, NGINX_COMPOSE):
            conf = conf_path.read_text()
            used = set(re.findall(r" (parley_\w+);$", nginx_block(
                conf, 'map "$request_method $uri" $parley_upstream'), re.MULTILINE))
            defined = set(re.findall(r"upstream (parley_\w+) \{", conf))
            self.assertEqual(used - defined, set(), conf_path.name)
            sync = nginx_block(conf, "upstream parley_sync")
            self.assertIn("hash $parley_sync_key consistent;", sync)
            self.assertEqual(len(re.findall(r"^server ", sync, re.MULTILINE)), 2)


class ComposeWorkersTest(unittest.TestCase):
    """docker/compose.workers.yml: every process's config loads, every service the
    config names exists, compose passes what the config reads."""

    def setUp(self) -> None:
        self.compose = yaml.safe_load((DOCKER / "compose.workers.yml").read_text())
        self.services = self.compose["services"]
        self.parleys = {name: s for name, s in self.services.items()
                        if name.startswith("parley-")}

    def _worker_of(self, service: dict[str, Any]) -> str | None:
        command = service.get("command") or []
        return command[command.index("--worker") + 1] if "--worker" in command else None

    def test_every_process_loads(self) -> None:
        config = load_with_env(WORKERS_CONFIG)
        wc = config.workers
        self.assertEqual(config.database.engine, "postgres")
        self.assertEqual(config.auth.session_cache_ttl, 1.0)  # the revocation bound
        self.assertEqual(sorted(wc.instances_of("client")), ["client1", "client2"])
        self.assertEqual(wc.event_writers, ("persister1", "persister2"))
        self.assertTrue(wc.forwards_writes)
        started = set()
        for name, service in self.parleys.items():
            worker = self._worker_of(service)
            try:
                one = load_with_env(WORKERS_CONFIG, worker)
            except ConfigError as e:
                self.fail(f"{name}: refused: {e}")
            self.assertEqual(one.workers.instance, worker or "main", name)
            self.assertEqual(f"parley-{worker or 'main'}", name)
            started.add(worker or "main")
        self.assertEqual(started, set(wc.workers), "a worker without a service, or the reverse")

    def test_config_names_the_stack_services(self) -> None:
        config = load_with_env(WORKERS_CONFIG)
        assert config.redis is not None
        self.assertIn(config.redis.host, self.services)
        self.assertIn(config.database.host, self.services)
        for name in config.workers.workers:
            endpoint = config.workers.endpoint(name)
            if endpoint is not None:
                self.assertIn(endpoint.host, self.parleys, name)
                worker = load_with_env(WORKERS_CONFIG, None if name == "main" else name)
                self.assertIn(endpoint.port, [li.port for li in worker.listeners
                                              if "replication" in li.resources], name)

    def test_nginx_upstreams_are_the_stack_services(self) -> None:
        conf = NGINX_COMPOSE.read_text()
        hosts = set(re.findall(r"server ([a-z0-9-]+):8008;", conf))
        self.assertEqual(hosts, {"parley-main", "parley-client1", "parley-client2"})
        self.assertLessEqual(hosts, set(self.parleys))
        nginx = self.services["nginx"]
        self.assertIn("./nginx.workers.conf:/etc/nginx/nginx.conf:ro", nginx["volumes"])
        published = [str(p) for s in self.services.values() for p in s.get("ports", [])]
        self.assertTrue(all(p.startswith("127.0.0.1:") for p in published), published)
        self.assertFalse(any(":9093" in p or ":9009" in p for p in published))

    def test_compose_passes_exactly_what_is_read(self) -> None:
        read = env_refs(yaml.safe_load(WORKERS_CONFIG.read_text()))
        for name, service in self.parleys.items():
            passed = set(service["environment"])
            self.assertEqual(read - passed, set(), f"{name}: read by the config, not passed")
            self.assertEqual(passed - read - IMAGE_VARIABLES, set(), f"{name}: read by nothing")
            self.assertIn("./parley.workers.yaml:/config/parley.yaml:ro", service["volumes"])

    def test_env_example_lists_every_required_variable(self) -> None:
        text = (DOCKER / "compose.workers.yml").read_text()
        required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
        listed = set(re.findall(r"^([A-Z0-9_]+)=", (DOCKER / ".env.example").read_text(),
                                re.MULTILINE))
        self.assertEqual(required - listed, set())

    def test_docker_compose_config(self) -> None:
        """``docker compose config`` validates the file, where a compose CLI exists."""
        import shutil

        for cli in (["docker", "compose"], ["docker-compose"]):
            if shutil.which(cli[0]) is None:
                continue
            probe = subprocess.run([*cli, "version"], capture_output=True, timeout=30)
            if probe.returncode == 0:
                break
        else:
            raise unittest.SkipTest("no docker compose CLI")
        text = (DOCKER / "compose.workers.yml").read_text()
        if cli == ["docker-compose"]:  # Compose v1 predates the top-level `name`
            text = re.sub(r"(?m)^name: .*\n", "", text)
        env = {**os.environ, **dict.fromkeys(
            re.findall(r"\$\{([A-Z0-9_]+):\?", text), "0123456789abcdef0123")}
        tmp = DOCKER / f".compose-check-{os.getpid()}.yml"
        tmp.write_text(text)
        try:
            done = subprocess.run([*cli, "-f", str(tmp), "config", "-q"], capture_output=True,
                                  text=True, timeout=60, env=env, cwd=DOCKER)
        finally:
            tmp.unlink()
        self.assertEqual(done.returncode, 0, done.stderr)


class OfflineImagesTest(unittest.TestCase):
    """contrib/workers/offline_images: the override changes only images (and the S3
    stand-in's command and health check), for services the stack has, and every image it
    names is one build.sh builds."""

    def setUp(self) -> None:
        self.dir = ROOT / "contrib" / "workers" / "offline_images"
        self.override = yaml.safe_load((self.dir / "compose.offline.yml").read_text())
        self.stack = yaml.safe_load((DOCKER / "compose.workers.yml").read_text())

    def test_overrides_only_images_of_existing_services(self) -> None:
        for name, service in self.override["services"].items():
            self.assertIn(name, self.stack["services"], name)
            allowed = {"image", "build"} | ({"command", "healthcheck"} if name == "minio" else set())
            self.assertLessEqual(set(service), allowed, name)
            if "build" in service:
                self.assertEqual(set(service["build"]), {"args"}, name)
                self.assertEqual(set(service["build"]["args"]), {"PYTHON_IMAGE"}, name)
        built = {name for name, s in self.stack["services"].items() if "build" in s}
        overridden = {name for name, s in self.override["services"].items() if "build" in s}
        self.assertEqual(built, overridden, "a Parley service left on python:3.11-slim")
        pulled = {name for name, s in self.stack["services"].items() if "build" not in s}
        self.assertEqual(pulled, {n for n, s in self.override["services"].items() if "image" in s})

    def test_every_image_is_built_by_build_sh(self) -> None:
        script = (self.dir / "build.sh").read_text()
        built = {f"parley-offline/{tag}" for tag, _ in
                 re.findall(r"^build ([a-z0-9.:-]+) ([a-z0-9]+)", script, re.MULTILINE)}
        named = {s["image"] for s in self.override["services"].values() if "image" in s}
        named |= {s["build"]["args"]["PYTHON_IMAGE"] for s in self.override["services"].values()
                  if "build" in s}
        self.assertLessEqual(named, built)
        for _, directory in re.findall(r"^build ([a-z0-9.:-]+) ([a-z0-9]+)", script, re.MULTILINE):
            self.assertTrue((self.dir / directory / "Dockerfile").is_file(), directory)
