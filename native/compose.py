"""docker-compose.yml, the one declaration of every service, read by native mode.

A native service takes its compose service's environment (env_file and `environment`), and where
it runs the same program its command, and translates them for local processes by general rules:

- a compose service's name as a host (alone in a `*HOST` variable, or in `host:port` and URLs) is
  that service's native address: .env's `<SERVICE>_HOST` where .env names one (POSTGRES_HOST,
  KAFKA_HOST, TRINO_HOST), else 127.0.0.1; `localhost`, `0.0.0.0` and an empty host are 127.0.0.1;
- a port is the .env variable of that service's port: `ports:` says "127.0.0.1:${SUPERSET_PORT}:8088"
  (8088 in the container is SUPERSET_PORT), a service-level `x-ports:` says the same of the ports
  compose does not publish ("${PIPELINE_EXPORTER_PORT}:9109"); a variable named like one of them
  whose value is that container port (SUPERSET_PORT: "8088") takes .env's value;
- a path under a bind mount's target is the repository path of its source; under a named
  volume's, a folder in the stack's state directory (or the one the native service names);
- then `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}` and `$$` are interpolated from the stack's
  settings (ctx.env), as compose interpolates from .env; the env_file `.env` is those settings too.

What genuinely differs natively (virtualenv paths, state folders, secrets native mode derives)
stays in the native service as a short dict of overrides. The settings a translation read are
recorded (`settings`), so that `./stack up` restarts a program when one of them changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from common.settings import REPO_ROOT, env_file_values

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
LOOPBACK = "127.0.0.1"

_VAR = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-+?])?(?P<arg>[^}]*)\}|(?P<bare>[A-Za-z_]\w*))"
)
#: `host:port` after a start, a scheme, `=`, `@`, a space or a comma; the port a number or ${VAR}
_ADDRESS = re.compile(r"(?:^|(?<=[/=@\s,]))(?P<host>[A-Za-z0-9_.-]*):(?P<port>\d+|\$\{\w+\})(?![\w}])")
_PORT_ENTRY = re.compile(r"^(?:[\d.]+:)?\$\{(?P<var>\w+)\}:(?P<container>\d+|\$\{\w+\})(?:/\w+)?$")


def interpolate(value, env: Mapping[str, str], seen: set[str] | None = None):
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR:+alternative}, $VAR, and $$ for a
    literal $ (in strings, lists and mappings); `seen` collects the variables it read."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        if seen is not None:
            seen.add(name)
        val, op, arg = env.get(name), match.group("op"), match.group("arg")
        if op in (":-", "-"):
            return val if val is not None and (val != "" or op == "-") else arg
        if op in (":+", "+"):
            return arg if (val if op == ":+" else val is not None) else ""
        if op in (":?", "?") and not val:
            raise KeyError(f"{name}: {arg}")
        return val if val is not None else ""

    if isinstance(value, str):
        return _VAR.sub(one, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, seen) for v in value]
    return value


def env_file_paths(service: dict, compose_file: Path = COMPOSE_FILE) -> list[Path]:
    """A service's env_file entries (a path, a list, or {path: ...} items), as compose resolves
    them: relative to the compose file's folder."""
    entries = service.get("env_file") or []
    entries = [entries] if isinstance(entries, str) else entries
    return [(compose_file.parent / (e if isinstance(e, str) else e["path"])).resolve() for e in entries]


class Compose:
    """docker-compose.yml as YAML reads it (anchors and merge keys resolved, nothing interpolated)
    and the stack's settings (`env`) it is interpolated from."""

    def __init__(self, env: Mapping[str, str], state: Path, path: Path = COMPOSE_FILE) -> None:
        self.env = env
        #: the stack's state directory, where named volumes become folders
        self.state = state
        self.path = path
        self.raw = yaml.safe_load(path.read_text())
        self.services: dict[str, dict] = self.raw["services"]
        #: (service, container port as written) -> the .env variable of that port
        self.ports: dict[tuple[str, str], str] = {}
        for name, service in self.services.items():
            for entry in [*(service.get("ports") or []), *(service.get("x-ports") or [])]:
                match = _PORT_ENTRY.match(str(entry))
                if match:
                    self.ports[(name, match["container"])] = match["var"]

    def service(self, name: str, volumes: Mapping[str, Path] | None = None) -> NativeService:
        if name not in self.services:
            raise SystemExit(f"stack: {self.path.name} has no service {name!r}")
        return NativeService(self, name, volumes or {})

    def port_variable(self, service: str, port: str) -> str | None:
        """The .env variable of `port` of `service`; a service that listens inside on a variable's
        value (trino: "${TRINO_PORT}:${TRINO_PORT}") answers any port written for it with it."""
        if (service, port) in self.ports:
            return self.ports[(service, port)]
        by_value = [var for (s, p), var in self.ports.items() if s == service and p == f"${{{var}}}"]
        return by_value[0] if len(by_value) == 1 else None

    def host(self, service: str) -> str:
        """A service's native host: .env's <SERVICE>_HOST if the settings name one, else loopback."""
        var = service.upper().replace("-", "_") + "_HOST"
        return f"${{{var}}}" if var in self.env else LOOPBACK


class NativeService:
    """One compose service, translated for a local process (the rules in the module docstring).
    `volumes` gives named volumes the folder a native service already uses for them."""

    def __init__(self, compose: Compose, name: str, volumes: Mapping[str, Path]) -> None:
        self.compose = compose
        self.name = name
        self.spec = compose.services[name]
        self.volumes = volumes
        #: the stack's settings the translations so far were made from
        self.settings: dict[str, str] = {}

    def mounts(self) -> list[tuple[str, str]]:
        """(container path, native path), longest first, for every volume of the service."""
        out = []
        for entry in self.spec.get("volumes") or []:
            if isinstance(entry, dict):  # the long syntax: {type, source, target, ...}
                source, target = str(entry.get("source") or ""), str(entry["target"])
            else:
                source, _, target = str(entry).partition(":")
                target = target.split(":")[0]
            if not source or not target:  # an anonymous volume: nothing of the repository's or the state's
                continue
            if source.startswith((".", "/")):
                native = (self.compose.path.parent / source).resolve()
            else:
                native = Path(self.volumes.get(source) or self.compose.state / source)
            out.append((target, str(native)))
        return sorted(out, key=lambda m: -len(m[0]))

    def _address(self, match: re.Match) -> str:
        host, port = match["host"], match["port"]
        if host in ("", "0.0.0.0", "localhost"):
            var = self.compose.ports.get((self.name, port))
            return f"{LOOPBACK}:${{{var}}}" if var else f"{LOOPBACK}:{port}"
        if host not in self.compose.services:
            return match.group(0)
        var = self.compose.port_variable(host, port)
        if var is None:
            raise SystemExit(
                f"stack: {self.compose.path.name}: {self.name} names {host}:{port}, a port {host} does not "
                "declare (in its ports: or x-ports:)"
            )
        return f"{self.compose.host(host)}:${{{var}}}"

    def translate(self, value: str, key: str = "") -> str:
        """One value (before interpolation) for a local process, then interpolated."""
        if key.endswith("HOST") and (value in self.compose.services or value == "0.0.0.0"):
            value = LOOPBACK if value == "0.0.0.0" else self.compose.host(value)
        elif key and any(var == key and port == value for (_, port), var in self.compose.ports.items()):
            value = f"${{{key}}}"
        else:
            for target, native in self.mounts():
                value = re.sub(rf"(?<![\w.-]){re.escape(target)}(?=/|$|[^\w.-])", native.replace("\\", "\\\\"), value)
            value = _ADDRESS.sub(self._address, value)
        seen: set[str] = set()
        out = interpolate(value, self.compose.env, seen)
        missing = sorted(v for v in seen if v not in self.compose.env and f"${{{v}}}" in value)
        if missing:
            raise SystemExit(f"stack: {missing[0]} is not set (add it to .env); {self.name} needs it")
        self.settings.update({v: self.compose.env[v] for v in seen if v in self.compose.env})
        return out

    def environment(self, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
        """Its env_file(s) in order and `environment` on top, as compose merges them, translated;
        then `overrides` (None: the compose value is dropped). The env_file `.env` is the stack's
        settings themselves (ctx.env)."""
        merged: dict[str, str] = {}
        project_env = (self.compose.path.parent / ".env").resolve()
        for path in env_file_paths(self.spec, self.compose.path):
            merged.update(dict(self.compose.env) if path == project_env else env_file_values(path))
        environment = self.spec.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        for key, value in environment.items():
            merged[key] = self.translate("" if value is None else str(value), key)
        for key, value in (overrides or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def value(self, key: str) -> str:
        """One variable of its `environment`, translated (where the rest is not native mode's)."""
        return self.translate(str(self.spec["environment"][key]), key)

    def command(self) -> list[str]:
        """Its command, translated (a string command is split as compose splits it)."""
        import shlex

        command = self.spec.get("command") or []
        return [self.translate(word) for word in (shlex.split(command) if isinstance(command, str) else command)]
