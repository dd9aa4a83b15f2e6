#!/usr/bin/env python3
"""Checks the Docker deployment without a Docker engine.

Every compose combination (docker-compose.yml alone, and with each GPU override) is
interpolated as `docker compose` would with a sample .env, merged, and parsed by compose-spec
(PyPI; a validating parser of the Compose Specification: unknown keys, wrong types and invalid
values are errors). Then the deployment rules are checked: hardened containers, health checks
through the binary, secrets only where they are used, models mounted read-only, required
settings, the GPU variants, the image (no curl, no models baked in), .dockerignore and the
Prometheus rules. `--self-test` also breaks each rule on purpose and expects the check to see
it. Exit status 1 names every problem.
"""

import copy
import json
import re
import sys
from pathlib import Path

import compose_spec
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"

SAMPLE_ENV = {
    "API_PASSWORD": "sample-api-password-0123",
    "WEBHOOK_SECRET": "whsec_BwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSY=",
    "LINK_SIGNING_KEY": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "REDIS_PASSWORD": "sample-redis-password-0123456789",
    "PUBLIC_BASE_URL": "https://uvr.example.com",
    "RENDER_GID": "105",
}
REQUIRED = ["API_PASSWORD", "WEBHOOK_SECRET", "LINK_SIGNING_KEY", "REDIS_PASSWORD", "PUBLIC_BASE_URL"]
UVR = {"api", "processor", "uploader"}
# Which services may receive each secret.
SECRETS = {
    "API_PASSWORD": {"api"},
    "WEBHOOK_SECRET": {"uploader"},
    "LINK_SIGNING_KEY": {"api", "uploader"},
    "AWS_ACCESS_KEY_ID": {"api", "uploader"},
    "AWS_SECRET_ACCESS_KEY": {"api", "uploader"},
    "REDIS_PASSWORD": UVR | {"redis", "redis-exporter"},
    "REDIS_SENTINEL_PASSWORD": UVR,
    "REDIS_URL": UVR,
    "METRICS_TOKEN": UVR,
    "GF_SECURITY_ADMIN_PASSWORD": {"grafana"},
}
ALERTS = {"UvrRedisDown", "UvrNoLiveProcessor", "UvrQueueAgeHigh", "UvrDeadLetters", "UvrWebhookFailures"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\$\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class Required(Exception):
    """A `${VAR:?message}` whose variable is unset."""


def interpolate(text, env):
    """Compose's variable syntax: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}; $$ is a literal $."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$$")  # kept for the container's shell
            i += 2
            continue
        m = _VAR.match(text, i) if text[i] == "$" else None
        if not m:
            out.append(text[i])
            i += 1
            continue
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-":
            value = value if value else interpolate(arg, env)
        elif op == "-":
            value = value if value is not None else interpolate(arg, env)
        elif op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise Required(f"{name}: {interpolate(arg, env)}")
        out.append(value or "")
        i = m.end()
    return "".join(out)


def merge(base, over):
    """Compose's merge of an override file, for what these files use: mappings merge,
    sequences and scalars are replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    return over


def load(files, env):
    doc = {}
    for f in files:
        doc = merge(doc, yaml.safe_load(interpolate((DOCKER / f).read_text(), env)))
    return {k: v for k, v in doc.items() if not k.startswith("x-")}


def env_of(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, None) for x in e)
    return e


def rules(doc, variant):
    """The deployment rules; returns the problems found."""
    bad = []
    try:
        compose_spec.PyCompose.from_json(json.dumps(doc))
    except Exception as e:  # the parser's error names the key and the reason
        bad.append(f"not valid Compose: {e}")
    services = doc.get("services", {})
    for name, svc in services.items():
        where = f"{variant}: {name}"
        if svc.get("read_only") is not True:
            bad.append(f"{where}: read_only is not true")
        if "ALL" not in (svc.get("cap_drop") or []):
            bad.append(f"{where}: cap_drop does not drop ALL")
        if "no-new-privileges:true" not in (svc.get("security_opt") or []):
            bad.append(f"{where}: no no-new-privileges")
        if not svc.get("mem_limit"):
            bad.append(f"{where}: no memory limit")
        if not svc.get("pids_limit"):
            bad.append(f"{where}: no pids limit")
        if "env_file" in svc:
            bad.append(f"{where}: env_file hands every variable (secrets included) to the container")
        env = env_of(svc)
        for secret, allowed in SECRETS.items():
            if secret in env and name not in allowed:
                bad.append(f"{where}: gets {secret}, which it does not use")
        if name in UVR:
            test = (svc.get("healthcheck") or {}).get("test") or []
            if test[:3] != ["CMD", "uvr", "healthcheck"]:
                bad.append(f"{where}: health check is not `uvr healthcheck`: {test}")
            if name == "processor":
                period = str((svc.get("healthcheck") or {}).get("start_period", "0s"))
                if not period.endswith("s") or int(period[:-1] or 0) < 120:
                    bad.append(f"{where}: start_period {period} does not cover the model warm-up")
            if env.get("PUBLIC_BASE_URL", "").startswith(("http://localhost", "http://127.")):
                bad.append(f"{where}: PUBLIC_BASE_URL defaults to localhost")
        if name in ("api", "processor") and "../models:/app/models:ro" not in (svc.get("volumes") or []):
            bad.append(f"{where}: models are not mounted read-only on /app/models")
        if name in UVR - {"uploader"} and "staging:/data/staging" not in (svc.get("volumes") or []):
            bad.append(f"{where}: no shared staging volume (uploads and stems go through it)")
    for name, secret in (doc.get("secrets") or {}).items():
        if "file" not in secret:
            bad.append(f"{variant}: secret {name} is not a file (compose cannot write it into a read-only container)")
    for name in UVR:
        if name not in services:
            bad.append(f"{variant}: no {name} service")
    proc = services.get("processor", {})
    if variant == "nvidia":
        devices = (((proc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
            bad.append("nvidia: the processor reserves no NVIDIA GPU")
        if "graphics" not in env_of(proc).get("NVIDIA_DRIVER_CAPABILITIES", ""):
            bad.append("nvidia: no graphics capability (no Vulkan ICD)")
    if variant == "dri" and not any(str(d).startswith("/dev/dri") for d in proc.get("devices") or []):
        bad.append("dri: /dev/dri is not passed to the processor")
    if variant in ("nvidia", "dri"):
        if env_of(proc).get("SEPARATOR_DEVICE") != "gpu":
            bad.append(f"{variant}: SEPARATOR_DEVICE is not gpu (a missing GPU would fall back)")
        if ((proc.get("build") or {}).get("args") or {}).get("VARIANT") != "gpu":
            bad.append(f"{variant}: the processor image is not built with VARIANT=gpu")
    return bad


def files_rules(texts):
    bad = []
    dockerfile = texts["Dockerfile"]
    if re.search(r"\bcurl\b", "\n".join(l for l in dockerfile.splitlines() if not l.lstrip().startswith("#"))):
        bad.append("Dockerfile: curl in the image")
    if re.search(r"^COPY\s+model", dockerfile, re.M):
        bad.append("Dockerfile: models are baked into the image")
    if not re.search(r'^\s*CMD \["uvr", "healthcheck"', dockerfile, re.M):
        bad.append("Dockerfile: HEALTHCHECK does not use `uvr healthcheck`")
    if "ARG VARIANT" not in dockerfile:
        bad.append("Dockerfile: no VARIANT build argument")
    ignored = set(texts[".dockerignore"].split())
    for must in (".git", ".env", "models", "target"):
        if must not in ignored:
            bad.append(f".dockerignore: {must} is not ignored")
    prom = yaml.safe_load(texts["prometheus.yml"])
    if "/etc/prometheus/alerts.yml" not in (prom.get("rule_files") or []):
        bad.append("prometheus.yml: alerts.yml is not loaded")
    alerts = yaml.safe_load(texts["alerts.yml"])
    names = {r.get("alert") for g in alerts.get("groups", []) for r in g.get("rules", [])}
    for g in alerts.get("groups", []):
        for r in g.get("rules", []):
            if not r.get("expr"):
                bad.append(f"alerts.yml: {r.get('alert')} has no expression")
    for missing in sorted(ALERTS - names):
        bad.append(f"alerts.yml: no {missing} rule")
    return bad


VARIANTS = {
    "cpu": ["docker-compose.yml"],
    "nvidia": ["docker-compose.yml", "docker-compose.nvidia.yml"],
    "dri": ["docker-compose.yml", "docker-compose.dri.yml"],
}


def texts():
    return {
        "Dockerfile": (DOCKER / "Dockerfile").read_text(),
        ".dockerignore": (ROOT / ".dockerignore").read_text(),
        "prometheus.yml": (DOCKER / "prometheus" / "prometheus.yml").read_text(),
        "alerts.yml": (DOCKER / "prometheus" / "alerts.yml").read_text(),
    }


def check():
    bad = []
    docs = {}
    for variant, files in VARIANTS.items():
        docs[variant] = load(files, SAMPLE_ENV)
        bad += rules(docs[variant], variant)
        for var in REQUIRED:
            env = {k: v for k, v in SAMPLE_ENV.items() if k != var}
            try:
                load(files, env)
                bad.append(f"{variant}: starts without {var}")
            except Required:
                pass
    bad += files_rules(texts())
    return bad, docs


def self_test(docs):
    """Each rule, broken on purpose, must be reported."""
    missed = []

    def expect(what, doc, variant="cpu"):
        if not rules(doc, variant):
            missed.append(what)

    def broken(fn, variant="cpu"):
        d = copy.deepcopy(docs[variant])
        fn(d)
        return d

    s = lambda d: d["services"]  # noqa: E731
    expect("unknown key", broken(lambda d: s(d)["api"].update(bogus=1)))
    expect("wrong type", broken(lambda d: s(d)["api"].update(read_only="yes")))
    expect("writable root", broken(lambda d: s(d)["uploader"].pop("read_only")))
    expect("capabilities kept", broken(lambda d: s(d)["redis"].update(cap_drop=["NET_RAW"])))
    expect("no no-new-privileges", broken(lambda d: s(d)["grafana"].pop("security_opt")))
    expect("no memory limit", broken(lambda d: s(d)["processor"].pop("mem_limit")))
    expect("env_file", broken(lambda d: s(d)["processor"].update(env_file=["../.env"])))
    expect("a secret where unused", broken(lambda d: s(d)["processor"]["environment"].update(WEBHOOK_SECRET="x")))
    expect("curl health check", broken(lambda d: s(d)["api"]["healthcheck"].update(test=["CMD", "curl", "-f", "x"])))
    expect("short start period", broken(lambda d: s(d)["processor"]["healthcheck"].update(start_period="15s")))
    expect("no staging for uploads", broken(lambda d: s(d)["api"].update(volumes=["../models:/app/models:ro"])))
    expect("models writable", broken(lambda d: s(d)["processor"].update(volumes=["../models:/app/models"])))
    expect("localhost links", broken(lambda d: s(d)["api"]["environment"].update(PUBLIC_BASE_URL="http://localhost:8000")))
    expect("an environment secret", broken(lambda d: d["secrets"].update(metrics_token={"environment": "METRICS_TOKEN"})))
    expect("no GPU reserved", broken(lambda d: s(d)["processor"].pop("deploy"), "nvidia"), "nvidia")
    expect("CPU fallback", broken(lambda d: s(d)["processor"]["environment"].update(SEPARATOR_DEVICE="auto"), "dri"), "dri")
    t = texts()
    for what, key, old, new in [
        ("curl in the image", "Dockerfile", "packages=\"ca-certificates\"", "packages=\"ca-certificates curl\""),
        ("models baked in", "Dockerfile", "COPY --from=builder /out/bin/", "COPY models /app/models\nCOPY --from=builder /out/bin/"),
        (".env in the context", ".dockerignore", "\n.env\n", "\n"),
        ("a missing alert", "alerts.yml", "UvrDeadLetters", "UvrSomethingElse"),
    ]:
        changed = dict(t)
        assert old in changed[key], (what, old)
        changed[key] = changed[key].replace(old, new)
        if not files_rules(changed):
            missed.append(what)
    return missed


def main():
    bad, docs = check()
    for b in bad:
        print(f"compose check: {b}", file=sys.stderr)
    if "--self-test" in sys.argv[1:]:
        missed = self_test(docs)
        for m in missed:
            print(f"compose check self-test: a broken rule went unseen: {m}", file=sys.stderr)
        bad += missed
    if bad:
        return 1
    services = sorted(docs["cpu"]["services"])
    print(f"compose check: {len(VARIANTS)} variants valid, {len(services)} services ({', '.join(services)}), rules hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
