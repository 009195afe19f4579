"""compose.yaml checked without a Docker engine: entry points, environment, volumes, ports, GPUs,
healthchecks and start order, parsed and interpolated the way Compose does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from urllib.parse import urlsplit

import pytest
import yaml
from deploy_compose import (
    COMPOSE_FILE,
    CPU_OVERRIDE,
    ENV_EXAMPLE,
    GITIGNORE,
    REQUIRED_SECRETS,
    ROOT,
    TEST_SECRETS,
    InterpolationError,
    command_of,
    duration_s,
    environment,
    interpolate,
    load,
    load_raw,
    mounts,
    option,
    read_env_file,
    stapipe_services,
    variables_used,
)

from stapipe_settings import Settings, env_names

# Settings a containerised deployment cannot leave to the embedded defaults: the servers, the
# folders that must be on volumes (not in the image's writable layer), and the secrets (a
# generated secret key differs per container, so logins would break across gunicorn restarts).
REQUIRED_IN_COMPOSE = {
    "STAPIPE_HOME",
    "STAPIPE_DATABASE_URL",
    "STAPIPE_BROKER_URL",
    "STAPIPE_DATA_ROOT",
    "STAPIPE_ARTEFACT_ROOT",
    "STAPIPE_LOG_ROOT",
    "STAPIPE_WEIGHTS_DIR",
    "STAPIPE_DASHBOARD_PASSWORD",
    "STAPIPE_SECRET_KEY",
}
# setting -> the named volume that must be mounted at its path in every container that uses it
VOLUME_OF = {
    "STAPIPE_DATA_ROOT": "datasets",
    "STAPIPE_ARTEFACT_ROOT": "artefacts",
    "STAPIPE_LOG_ROOT": "logs",
    "STAPIPE_WEIGHTS_DIR": "weights",
    "TORCH_HOME": "torch-cache",
}
VALID_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
SECRET_WORDS = ("PASSWORD", "SECRET", "BASIC_AUTH", "TOKEN")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load()  # a fresh .env: the secrets and nothing else, i.e. the file's own defaults


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def anchor_env() -> dict[str, str]:
    return {k: str(v) for k, v in load()["x-stapipe-env"].items()}


RESET = "!reset"


class ResetLoader(yaml.SafeLoader):
    """Compose's `!reset` tag (drop the base file's value) as a marker."""


ResetLoader.add_constructor("!reset", lambda _loader, _node: RESET)


def _queues(svc: dict) -> str | None:
    cmd = command_of(svc)
    return option(cmd, "--queues") if cmd[:2] == ["stapipe", "worker"] else None


def _gpu_workers(services: dict) -> dict[str, dict]:
    return {n: s for n, s in services.items() if _queues(s) and "gpu" in _queues(s).split(",")}


# ------------------------------------------------------------------------------------- shape


def test_file_shape(services: dict) -> None:
    raw = load_raw()  # also: no duplicate keys anywhere (StrictLoader)
    assert "version" not in raw, "the Compose spec has no version key (it is obsolete and warned about)"
    expected = {"redis", "postgres", "migrate", "dashboard", "worker-gpu", "worker-cpu", "flower"}
    assert expected <= set(services)
    # the default `docker compose up` set: everything but the opt-in profiles
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert default == {"redis", "postgres", "migrate", "dashboard", "worker-gpu", "worker-cpu"}
    assert services["flower"]["profiles"] == ["monitoring"]


def test_interpolation_rules() -> None:
    env = {"A": "a", "E": ""}
    assert interpolate("${A:-x}/${B:-x}/${E:-x}/${E-x}/$A/$$A", env) == "a/x/x//a/$A"
    assert interpolate("${B:-${A}-${C:-c}}", env) == "a-c"
    assert interpolate("${A:+set}${B:+set}", env) == "set"
    with pytest.raises(InterpolationError):
        interpolate("${B:?must be set}", env)
    with pytest.raises(InterpolationError):
        interpolate("${A:-x", env)


# ---------------------------------------------------------------------------------- commands


def test_stapipe_commands_parse_with_the_real_cli(services: dict) -> None:
    """Each `stapipe …` command is accepted by the very parser the console script uses."""
    from worker.cli import build_parser

    commands = {n: command_of(s) for n, s in services.items() if command_of(s)[:1] == ["stapipe"]}
    assert {"migrate", "worker-gpu", "worker-cpu"} <= set(commands)
    parser = build_parser()
    for name, argv in commands.items():
        try:
            args = parser.parse_args(argv[1:])
        except SystemExit as exc:  # argparse reports the problem on stderr
            pytest.fail(f"{name}: `{' '.join(argv)}` is rejected by worker.cli.build_parser() (exit {exc.code})")
        assert callable(getattr(args, "func", None)), f"{name}: `{' '.join(argv)}` has no handler"
    assert commands["migrate"] == ["stapipe", "db", "upgrade"]


def test_workers_queues_and_concurrency(services: dict) -> None:
    workers = {n: s for n, s in services.items() if _queues(s)}
    assert set(_gpu_workers(services)) >= {"worker-gpu"}
    assert any(_queues(s) == "cpu" for s in workers.values())
    for name, svc in _gpu_workers(services).items():
        assert _queues(svc) == "gpu", f"{name}: a GPU worker must serve only the gpu queue"
        assert option(command_of(svc), "--concurrency") == "1", f"{name}: one task per GPU"
    hostnames = [option(command_of(s), "--hostname") for s in workers.values()]
    assert all(hostnames) and len(set(hostnames)) == len(hostnames), "worker node names must be unique"
    concurrency = option(command_of(services["worker-cpu"]), "--concurrency")
    assert concurrency and int(concurrency) >= 1


def test_gunicorn_command_is_valid_and_serves_a_flask_app(services: dict, tmp_path) -> None:
    from gunicorn.config import Config

    argv = command_of(services["dashboard"])
    assert argv[0] == "gunicorn"
    args = Config().parser().parse_args(argv[1:])  # gunicorn's own option parser
    assert args.bind == ["0.0.0.0:8000"], "bind all interfaces inside the container"
    assert args.workers and int(args.workers) >= 2
    assert args.args == ["dashboard.wsgi:app"]
    module, attr = args.args[0].split(":")
    # Import in a fresh interpreter with a throw-away home, as gunicorn would.
    env = {**os.environ, "STAPIPE_HOME": str(tmp_path)}
    code = f"import flask, {module} as m; assert isinstance(m.{attr}, flask.Flask), type(m.{attr})"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{args.args[0]} is not an importable Flask app:\n{proc.stderr[-3000:]}"


def test_third_party_images_are_pinned(services: dict) -> None:
    assert services["redis"]["image"] == "redis:7"
    assert services["postgres"]["image"] == "postgres:16"
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image})"


def test_stapipe_services_share_one_image(services: dict) -> None:
    ours = stapipe_services({"services": services})
    assert set(ours) == {"migrate", "dashboard", "worker-gpu", "worker-gpu-1", "worker-cpu"}
    assert len({s["image"] for s in ours.values()}) == 1
    assert all(s["build"]["context"] == "." for s in ours.values())


def test_flower_needs_no_project_dependency(services: dict, anchor_env: dict) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(re.match(r"flower\b", d) for d in deps), "flower runs from its own image"
    flower = services["flower"]
    assert flower["image"].startswith("mher/flower:")
    argv = command_of(flower)
    assert argv[0] == "celery" and "flower" in argv
    assert f"--broker={anchor_env['STAPIPE_BROKER_URL']}" in argv, "Flower must watch the workers' broker"


# ------------------------------------------------------------------------------- environment


def test_every_stapipe_variable_is_a_setting(compose: dict) -> None:
    known = set(env_names())
    for name, svc in compose["services"].items():
        unknown = {k for k in environment(svc) if k.startswith("STAPIPE_")} - known
        assert not unknown, f"{name} sets variables stapipe_settings.Settings does not read: {unknown}"
    unknown = {k for k in read_env_file(include_commented=True) if k.startswith("STAPIPE_")} - known
    assert not unknown, f".env.example names variables the settings do not read: {unknown}"


def test_required_settings_are_set_in_every_stapipe_container(compose: dict, anchor_env: dict) -> None:
    assert set(anchor_env) >= REQUIRED_IN_COMPOSE, REQUIRED_IN_COMPOSE - set(anchor_env)
    for name, svc in stapipe_services(compose).items():
        assert environment(svc) == anchor_env, f"{name} must use the shared x-stapipe-env"


def test_every_setting_is_documented_in_compose() -> None:
    """The one place: each STAPIPE_* setting is either set in x-stapipe-env or explained there."""
    text = COMPOSE_FILE.read_text()
    missing = [n for n in env_names() if n not in text]
    assert not missing, f"settings not mentioned in compose.yaml: {missing}"


@pytest.mark.parametrize("dotenv", ["defaults", ".env.example"])
def test_settings_accept_the_compose_environment(dotenv: str, monkeypatch) -> None:
    env = {**(read_env_file() if dotenv == ".env.example" else {}), **TEST_SECRETS}
    anchor = {k: str(v) for k, v in load(env)["x-stapipe-env"].items()}
    for key in list(os.environ):
        if key.startswith("STAPIPE_"):
            monkeypatch.delenv(key)
    for key, value in anchor.items():
        monkeypatch.setenv(key, value)
    s = Settings()  # raises if a value does not validate (int, bool, URL fields …)
    assert s.database_url == anchor["STAPIPE_DATABASE_URL"]
    assert not s.broker_is_embedded
    assert all(str(getattr(s, f)).startswith("/") for f in ("home", "data_root", "artefact_root", "log_root", "weights_dir"))


@pytest.mark.parametrize("dotenv", ["defaults", ".env.example", "custom"])
def test_urls_point_at_the_compose_servers(dotenv: str) -> None:
    env = {"defaults": {}, ".env.example": read_env_file(), "custom": {"POSTGRES_PASSWORD": "s3cr3t-x"}}[dotenv]
    compose = load({**TEST_SECRETS, **{k: v for k, v in env.items() if v}})
    pg = environment(compose["services"]["postgres"])
    db = urlsplit(compose["x-stapipe-env"]["STAPIPE_DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg"
    assert (db.hostname, db.port) == ("postgres", 5432)
    assert db.username == pg["POSTGRES_USER"] and db.password == pg["POSTGRES_PASSWORD"]
    assert db.path == "/" + pg["POSTGRES_DB"]
    broker = urlsplit(compose["x-stapipe-env"]["STAPIPE_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    api = urlsplit(compose["x-stapipe-env"]["STAPIPE_API_URL"])
    assert api.hostname == "dashboard" and api.port == 8000


def test_worker_only_hosts_can_override_the_servers() -> None:
    env = {"STAPIPE_DATABASE_URL": "postgresql+psycopg://u:p@10.0.0.1:5432/stapipe", "STAPIPE_BROKER_URL": "redis://10.0.0.1:6379/0"}
    compose = load({**TEST_SECRETS, **env})
    for key, value in env.items():
        assert compose["x-stapipe-env"][key] == value
    assert "--broker=redis://10.0.0.1:6379/0" in command_of(compose["services"]["flower"])


def test_no_hard_coded_secrets() -> None:
    """Secrets come from .env only: ${VAR:?message}, no default a stack could start with."""
    raw = load_raw()
    envs = [raw["x-stapipe-env"]] + [s.get("environment") or {} for s in raw["services"].values()]
    seen = set()
    for env in envs:
        for key, value in env.items():
            if any(w in key for w in SECRET_WORDS):
                m = re.fullmatch(r"\$\{(\w+):\?copy \.env\.example to \.env and set (\w+)\}", str(value))
                assert m and m.group(1) == m.group(2) == key, f"{key} must be ${{{key}:?copy .env.example ...}}, not {value!r}"
                seen.add(key)
    assert seen >= set(REQUIRED_SECRETS) - {"POSTGRES_PASSWORD"}
    url = raw["x-stapipe-env"]["STAPIPE_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?copy .env.example to .env and set POSTGRES_PASSWORD}" in url
    assert not re.search(r"dev-only|change-me", COMPOSE_FILE.read_text()), "no dev-only defaults left"


@pytest.mark.parametrize("missing", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    for absent in ({k: v for k, v in TEST_SECRETS.items() if k != missing}, {**TEST_SECRETS, missing: ""}):
        with pytest.raises(InterpolationError, match=f"required variable {missing} is missing: "
                                                     f"copy .env.example to .env and set {missing}"):
            load(absent)
    with pytest.raises(InterpolationError):
        load(read_env_file())  # .env.example copied without setting anything


def test_env_file_is_never_committed() -> None:
    lines = [line.strip() for line in GITIGNORE.read_text().splitlines()]
    assert ".env" in lines or "/.env" in lines
    example = read_env_file()
    assert all(example[k] == "" for k in REQUIRED_SECRETS), "the example ships no usable secret"


def test_new_env_script_fills_every_secret(tmp_path) -> None:
    target = tmp_path / ".env"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "new_env.py"), str(target)], capture_output=True,
                          text=True, check=True)
    assert str(target) in done.stdout and oct(target.stat().st_mode & 0o777) == "0o600"
    env = read_env_file(target)
    assert all(len(env[k]) >= 20 for k in REQUIRED_SECRETS)
    assert set(env) == set(read_env_file())
    load(env)  # compose would start
    db = urlsplit(load(env)["x-stapipe-env"]["STAPIPE_DATABASE_URL"])
    assert db.password == env["POSTGRES_PASSWORD"]
    again = subprocess.run([sys.executable, str(ROOT / "tools" / "new_env.py"), str(target)], capture_output=True,
                           text=True)
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert read_env_file(target) == env


def test_cpu_override_drops_only_the_gpu_reservations() -> None:
    """compose.cpu.yaml as Compose merges it: `!reset` empties deploy; the rest stays."""
    override = yaml.load(CPU_OVERRIDE.read_text(), Loader=ResetLoader)  # noqa: S506 - SafeLoader subclass
    base = load()["services"]
    assert set(override) == {"services"}
    assert set(override["services"]) == {n for n, s in base.items() if "devices" in str(s.get("deploy", ""))}
    for name, svc in override["services"].items():
        assert svc["deploy"] == RESET, f"{name}: deploy must be reset"
        assert set(svc) <= {"deploy", "shm_size"}, f"{name}: the override changes only the GPU parts"
        assert _queues(base[name]) == "gpu"  # the gpu queue still has its worker: on the CPU


def test_env_example_matches_the_variables_compose_reads() -> None:
    used = variables_used()
    documented = set(read_env_file(include_commented=True))
    assert used - documented == set(), f"variables compose.yaml reads that .env.example does not show: {used - documented}"
    assert documented - used == set(), f".env.example variables compose.yaml never reads: {documented - used}"
    assert "dev-only" not in ENV_EXAMPLE.read_text()


# ---------------------------------------------------------------------------- volumes, ports


def test_named_volumes_declared_and_used(compose: dict) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, svc in compose["services"].items():
        for source, target, _ in mounts(svc):
            assert target.startswith("/"), f"{name}: mount target {target} must be absolute"
            if not source.startswith(("/", ".", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    assert {"datasets", "artefacts", "logs", "weights", "torch-cache", "database"} <= declared


def test_mounts_match_the_configured_paths(compose: dict, anchor_env: dict) -> None:
    paths = {k: anchor_env[k] for k in VOLUME_OF}
    for name, svc in stapipe_services(compose).items():
        by_target = {target: (source, ro) for source, target, ro in mounts(svc)}
        targets = list(by_target)
        assert len(targets) == len(set(targets)), f"{name}: two volumes on one path"
        for key, path in paths.items():
            if path in by_target:
                assert by_target[path][0] == VOLUME_OF[key], f"{name}: {path} ({key}) must be volume {VOLUME_OF[key]}"
        if name.startswith("worker"):
            need = ["STAPIPE_DATA_ROOT", "STAPIPE_ARTEFACT_ROOT", "STAPIPE_LOG_ROOT", "STAPIPE_WEIGHTS_DIR"]
            need += ["TORCH_HOME"] if name in _gpu_workers(compose["services"]) else []
            for key in need:
                assert paths[key] in by_target, f"{name} must mount {VOLUME_OF[key]} at {paths[key]} ({key})"
                assert not by_target[paths[key]][1], f"{name}: {paths[key]} must be writable"
        if name == "dashboard":
            for key in ("STAPIPE_DATA_ROOT", "STAPIPE_ARTEFACT_ROOT", "STAPIPE_LOG_ROOT", "STAPIPE_WEIGHTS_DIR"):
                assert paths[key] in by_target, f"the dashboard must see {key} ({paths[key]})"
    # the servers keep their data on volumes
    assert ("database", "/var/lib/postgresql/data", False) in mounts(compose["services"]["postgres"])
    assert ("redis-data", "/data", False) in mounts(compose["services"]["redis"])


def test_ports_are_consistent(services: dict) -> None:
    published = []
    for name, svc in services.items():
        for spec in svc.get("ports", []):
            parts = str(spec).split(":")
            host, container = parts[-2], parts[-1]
            published.append(host if len(parts) == 2 else ":".join(parts[:-1]))
            if name == "dashboard":
                bind = option(command_of(svc), "--bind")
                assert container == bind.rsplit(":", 1)[1], "published port != gunicorn --bind port"
                assert ":8000/healthz" in " ".join(svc["healthcheck"]["test"]), "healthcheck must probe the bound port"
            if name == "flower":
                assert container == option(command_of(svc), "--port")
                assert parts[0] == "127.0.0.1", "Flower can revoke tasks: publish it on localhost only"
    assert len(published) == len(set(published)), f"host ports published twice: {published}"
    for name in ("redis", "postgres"):
        assert not services[name].get("ports"), f"{name} is not published by default (see docs/deployment.md)"


# ------------------------------------------------------------------------------------- GPUs


def test_gpu_workers_reserve_exactly_one_gpu(services: dict) -> None:
    seen_devices: list[str] = []
    for name, svc in _gpu_workers(services).items():
        devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        assert devices and len(devices) == 1, f"{name}: needs deploy.resources.reservations.devices"
        dev = devices[0]
        assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"], f"{name}: {dev}"
        assert ("count" in dev) != ("device_ids" in dev), f"{name}: count and device_ids exclude each other"
        if "count" in dev:
            assert dev["count"] == 1, f"{name}: one GPU per worker"
            seen_devices.append("0")  # Docker maps count: N to devices 0..N-1
        else:
            assert len(dev["device_ids"]) == 1, f"{name}: one GPU per worker"
            seen_devices.append(str(dev["device_ids"][0]))
        assert duration_s(svc["stop_grace_period"]) >= 300, f"{name}: give a training stage time to checkpoint"
        assert svc.get("shm_size"), f"{name}: DataLoader workers need more than Docker's 64 MB /dev/shm"
    assert len(seen_devices) == len(set(seen_devices)), f"two GPU workers on one GPU: {seen_devices}"
    for name, svc in services.items():
        if name not in _gpu_workers(services):
            assert "deploy" not in svc or "devices" not in str(svc["deploy"]), f"{name} must not hold a GPU"


# -------------------------------------------------------------------- health, order, restarts


def test_healthchecks(services: dict) -> None:
    for name in ("redis", "postgres", "dashboard", "worker-gpu", "worker-gpu-1", "worker-cpu"):
        hc = services[name].get("healthcheck")
        assert hc and isinstance(hc["test"], list) and hc["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout"):
            duration_s(hc[key])
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["dashboard"]["healthcheck"]["test"])
    for name, svc in services.items():
        if _queues(svc):  # a worker pings itself: its own node name, with %h as the container's $HOSTNAME
            node = option(command_of(svc), "--hostname").replace("%h", "$HOSTNAME")
            test = svc["healthcheck"]["test"]
            assert test[0] == "CMD-SHELL", f"{name}: $HOSTNAME needs a shell"
            argv = test[1].split()
            assert argv[:5] == ["celery", "-A", "worker.celery_app", "inspect", "ping"], test
            assert option(argv, "--destination") == node, f"{name}: healthcheck pings {option(argv, '--destination')}"


def test_depends_on_conditions(services: dict) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on syntax with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert not services[dep].get("profiles"), f"{name} depends on opt-in service {dep}"
            cond = spec["condition"]
            assert cond in VALID_CONDITIONS, f"{name}: invalid condition {cond}"
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
            if cond == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} must be a one-shot to complete"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("dashboard", "worker-gpu", "worker-gpu-1", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    # no cycles
    def visit(n: str, path: tuple[str, ...]) -> None:
        assert n not in path, f"depends_on cycle: {path + (n,)}"
        for dep in services[n].get("depends_on", {}):
            visit(dep, path + (n,))

    for name in services:
        visit(name, ())


def test_restart_policies_and_grace_periods(services: dict) -> None:
    for name, svc in services.items():
        if name == "migrate":
            assert svc["restart"] == "no"
        else:
            assert svc.get("restart") == "unless-stopped", f"{name}: restart: unless-stopped"
    duration_s(services["worker-cpu"]["stop_grace_period"])
