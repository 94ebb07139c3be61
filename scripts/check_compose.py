#!/usr/bin/env python3
"""Check docker-compose.yml and the Dockerfile without a Docker engine.

1. The compose file validates against the Compose Specification's JSON
   schema (compose_spec.json, as shipped in the docker-compose 1.29.2 wheel
   on PyPI; fetched once, checked by SHA-256, cached).
2. It has what tayori needs: Redis with AOF on a volume, an S3 server, a
   gateway, workers that can scale (no container_name, no host port), and
   every `depends_on` names a service.
3. Least privilege: the S3 server's root credential (MinIO's
   MINIO_ROOT_USER / MINIO_ROOT_PASSWORD) reaches no service but the S3
   server and the one-shot setup service (restart "no", running `mc admin`);
   the gateway and workers hold a user limited to tayori's bucket.
4. Every file the Dockerfile COPYs from the build context exists and is not
   excluded by .dockerignore; the build has a builder and a runtime stage.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
WHEEL_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"


def need(module, spec):
    try:
        return __import__(module)
    except ImportError:  # from PyPI when the machine lacks it
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", spec])
        return __import__(module)


yaml = need("yaml", "pyyaml==6.0.3")
jsonschema = need("jsonschema", "jsonschema==4.23.0")


def compose_schema(cache):
    path = os.path.join(cache, WHEEL)
    ok = os.path.isfile(path) and hashlib.sha256(open(path, "rb").read()).hexdigest() == WHEEL_SHA256
    if not ok:
        os.makedirs(cache, exist_ok=True)
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", cache,
                               "docker-compose==1.29.2"])
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        if digest != WHEEL_SHA256:
            sys.exit(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


def check_compose(path, cache, errors):
    with open(path) as f:
        doc = yaml.safe_load(f)
    validator = jsonschema.Draft201909Validator(compose_schema(cache))
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        errors.append(f"schema: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}")
    services = doc.get("services") or {}
    for name in ("redis", "gateway", "worker"):
        if name not in services:
            errors.append(f"service {name!r} is missing")
    if not any(s in services for s in ("minio", "garage")):
        errors.append("no S3 server service (minio or garage)")
    redis = services.get("redis") or {}
    if "--appendonly yes" not in " ".join(map(str, redis.get("command") or [])):
        errors.append("redis must run with --appendonly yes")
    if not any(str(v).endswith(":/data") for v in redis.get("volumes") or []):
        errors.append("redis must keep /data on a volume")
    worker = services.get("worker") or {}
    if "container_name" in worker or worker.get("ports"):
        errors.append("worker must not set container_name or host ports (it must scale)")
    check_least_privilege(services, errors)
    root = os.path.dirname(os.path.abspath(path))
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not os.path.isfile(os.path.join(root, ctx, dockerfile)):
                errors.append(f"{name}: {dockerfile} does not exist in {ctx}")
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                errors.append(f"{name}: depends on unknown service {dep}")
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith(".") and not os.path.exists(os.path.join(root, src)):
                errors.append(f"{name}: volume source {src} does not exist")
            elif src and not src.startswith(("/", ".")) and src not in (doc.get("volumes") or {}):
                errors.append(f"{name}: named volume {src} is not declared")
    return len(services)


VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def check_least_privilege(services, errors):
    minio = services.get("minio")
    if not minio:
        return
    env = minio.get("environment") or {}
    root_vars = set()
    for key in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        found = VARIABLE.findall(str(env.get(key, "")))
        if not found:
            errors.append(f"minio: {key} must come from a variable (the root credential is not written in the file)")
        root_vars.update(found)
    for name, svc in services.items():
        command = " ".join(map(str, svc.get("command") or [])) if not isinstance(svc.get("command"), str) else svc["command"]
        setup = str(svc.get("restart")) == "no" and "mc admin" in command
        if name == "minio" or setup:
            continue
        text = json.dumps(svc.get("environment") or {}) + command
        for var in sorted(root_vars):
            if re.search(r"\$\{?" + var + r"\b", text):
                errors.append(f"{name}: gets the storage root credential ({var}); give it the tayori user instead")
    for name in ("gateway", "worker"):
        env = (services.get(name) or {}).get("environment") or {}
        if not env.get("TAYORI_S3_ACCESS_KEY") or not env.get("TAYORI_S3_SECRET_KEY"):
            errors.append(f"{name}: TAYORI_S3_ACCESS_KEY and TAYORI_S3_SECRET_KEY (the tayori user) must be set")


def check_dockerfile(root, errors):
    ignored = []
    if os.path.isfile(os.path.join(root, ".dockerignore")):
        ignored = [l.strip().strip("/") for l in open(os.path.join(root, ".dockerignore")) if l.strip() and not l.startswith("#")]
    stages = 0
    for n, line in enumerate(open(os.path.join(root, "Dockerfile")), 1):
        words = line.split()
        if not words:
            continue
        if words[0].upper() == "FROM":
            stages += 1
        if words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            for src in [w for w in words[1:-1] if not w.startswith("--")]:
                if not os.path.exists(os.path.join(root, src)):
                    errors.append(f"Dockerfile:{n}: COPY source {src} does not exist")
                if any(src == i or src.startswith(i + "/") for i in ignored):
                    errors.append(f"Dockerfile:{n}: COPY source {src} is excluded by .dockerignore")
    if stages < 2:
        errors.append("Dockerfile: expected a multi-stage build (a builder and a runtime image)")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
    root = os.path.dirname(os.path.abspath(path))
    cache = os.path.join(os.environ.get("TAYORI_CACHE_DIR") or os.path.join(root, ".cache"), "dl")
    errors = []
    n = check_compose(path, cache, errors)
    check_dockerfile(root, errors)
    if errors:
        print(f"{path} / Dockerfile check failed:\n  " + "\n  ".join(errors))
        sys.exit(1)
    print(f"{path}: valid against the Compose Specification schema, {n} services; Dockerfile sources check out")


if __name__ == "__main__":
    main()
