#!/usr/bin/env python3
"""Check docker-compose.yml without a Docker engine: it parses, has the
services tayori needs, and every file it references exists."""
import os
import sys

try:
    import yaml
except ImportError:  # PyYAML comes from PyPI when the machine lacks it
    import subprocess
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "pyyaml==6.0.3"])
    import yaml

path = sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml"
root = os.path.dirname(os.path.abspath(path))
with open(path) as f:
    doc = yaml.safe_load(f)
errors = []
services = doc.get("services") or {}
for name in ("redis", "gateway", "worker"):
    if name not in services:
        errors.append(f"service {name!r} is missing")
if not any(s in services for s in ("minio", "garage")):
    errors.append("no S3 server service (minio or garage)")
redis_cmd = " ".join(map(str, (services.get("redis") or {}).get("command") or []))
if "--appendonly yes" not in redis_cmd:
    errors.append("redis must run with --appendonly yes")
if "container_name" in (services.get("worker") or {}):
    errors.append("worker must not set container_name (it must scale)")
for name, svc in services.items():
    build = svc.get("build")
    if build:
        ctx = build if isinstance(build, str) else build.get("context", ".")
        ctx_path = os.path.join(root, ctx)
        if not os.path.isdir(ctx_path):
            errors.append(f"{name}: build context {ctx} does not exist")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isfile(os.path.join(ctx_path, dockerfile)):
            errors.append(f"{name}: {dockerfile} does not exist")
    for vol in svc.get("volumes") or []:
        src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
        if src.startswith(".") and not os.path.exists(os.path.join(root, src)):
            errors.append(f"{name}: volume source {src} does not exist")
    for env_file in svc.get("env_file") or []:
        if not os.path.exists(os.path.join(root, env_file)):
            errors.append(f"{name}: env_file {env_file} does not exist")
    for dep in svc.get("depends_on") or []:
        if dep not in services:
            errors.append(f"{name}: depends on unknown service {dep}")
for vol in (doc.get("volumes") or {}):
    pass
if errors:
    print("docker-compose.yml check failed:\n  " + "\n  ".join(errors))
    sys.exit(1)
print(f"docker-compose.yml: {len(services)} services, references check out")
