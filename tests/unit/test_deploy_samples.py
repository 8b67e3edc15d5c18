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
